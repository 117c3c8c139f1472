"""The data of an experiment: every source behind one interface, and the tf.data pipelines.

`sources.py` holds the interface (`Source`) and the registry that loads the source a spec names
(`load_splits`); each source has its module: `shapes` (procedural, offline), `cifar` and `mnist` (the
readers of Keras' archives) with `archives` (where Keras caches them, and the bounded download),
`npz` (the user's arrays), `image_folder` (one folder per class, streamed from disk) and `tfds`
(TensorFlow Datasets, an optional extra). What they share: `files` (checked paths and sizes, the
DataError every bad input becomes), `arrays` (splits held in memory), `pipeline` (stateless-shuffled
batches a resume reproduces) and `augment`. Images stay uint8 until the model scales them.

Imports: spec, compat, memory.
"""
