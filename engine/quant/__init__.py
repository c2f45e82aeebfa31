"""Int4 weight quantization in the AutoAWQ GEMM format: packing, RTN and AWQ."""
