"""Person-crop datasets for the image-to-2D model: image `sources` (rendered synthetic motion,
Human3.6M videos, frame folders), the synthetic `render`er, `crops`, the image row layout and its
build (`dataset`, through `preprocessing.store.writer`), and the `readers` that decode it."""
