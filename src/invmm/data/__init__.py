"""Where images come from: folders, manifests, webdataset shards and img2dataset folders, Hugging Face datasets,
masks, one image's bytes by reference, parts of a dataset by id, and the prefetching reader. Nothing here writes a
run folder."""
