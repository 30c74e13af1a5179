"""Everything nldist writes and may reuse, in one record format (:mod:`.records`): score
chunks (:mod:`.scores`), persisted dual blocks (:mod:`.dual_blocks`), stage caches
(:mod:`.stage_cache`) and the dataset (:mod:`.dataset`). Imports no compute module.
"""
