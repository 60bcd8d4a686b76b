"""bench: benchmark compressed Core ML image-captioning models on iPhones.

Pipeline folders: data -> train -> build -> eval -> deploy -> run -> store -> report.
Heavy libraries (torch, coremltools, transformers, pymobiledevice3) are imported only inside the
functions that need them, so `bench --help` stays instant.
"""

__version__ = "0.1.0"
