"""`raylift bench {data,model,train}`: benchmarks that report figures and never pass/fail on time.

- `benchmarks.py`: the command; dispatches to one module per benchmark.
- `data.py`: preprocessing and read-back throughput (windows/s, bytes/window).
- `model.py`: forward+backward step time of every model at a small batch.
- `train.py`: training frames/s, peak memory and achieved TFLOP/s of one model.
"""
