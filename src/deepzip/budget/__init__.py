"""Ask for a size, get the best fidelity: per-tensor rate allocation under a byte budget.

`sizes` turns `8x`, `12MB` or a bits-per-weight figure into bytes; `allocate` chooses each
tensor's quantizer step to minimise the (sensitivity-weighted) distortion under the budget;
`sensitivity` measures how much each tensor's error costs at the model's output.
"""
