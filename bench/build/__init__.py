"""build: a captioner → compressed Core ML variants, each verified against its stored bytes.

matrix.py (YAML → recipes) → export.py (torch.jit.trace → ct.convert: encoder + decoder step) →
compress.py (coremltools.optimize.coreml, with the fp16-pruning and op-type-config workarounds) →
analyze.py (protobuf + weight.bin, no full coremltools import) → verify.py (recipe vs measured) →
variants.py (manifest records) ; builder.py drives it with a content-addressed cache.
torch_weights.py loads the deployed weights back into PyTorch; coreml_predict.py runs Core ML on macOS.
"""
