"""The run folder as storage: run.json and its comparison on resume, the append-only ledgers and atomic writes, the
lock, what a run records of how it was made (versions, fingerprints, hashes) and the per-image artifacts. Nothing
here runs a model. (Kept free of imports so that `store.hashing` can be imported from anywhere.)"""
