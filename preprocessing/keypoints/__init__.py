"""2D-keypoint window datasets for the lifters: `windows` (cutting sequences into seq2seq /
seq2frame windows, mirroring), the window row layout and its build (`dataset`, through
`preprocessing.store.writer`), and the `readers` that stream it to training and evaluation."""
