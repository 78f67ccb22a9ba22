"""Scripts for child Python processes, for checks whose failure is an abort
(test_exit.py, bindings/audit/sdk_audit.py). Each is run as
`python -c SCRIPT FOLDER MODEL BUNDLE STORE`: FOLDER holds the generated
module next to the library."""

# Loads the module from FOLDER and makes a one-thread config for STORE.
PREAMBLE = r"""
import asyncio, gc, importlib.util, sys
folder, model, bundle, store = sys.argv[1:5]
spec = importlib.util.spec_from_file_location("l2rec_ffi", folder + "/l2rec_ffi.py")
ffi = importlib.util.module_from_spec(spec)
sys.modules["l2rec_ffi"] = ffi
spec.loader.exec_module(ffi)
config = ffi.RecommenderConfig(model_path=model, bundle_dir=bundle, store_path=store, threads=1)
"""

# Opens, makes async calls (the last one's wake-up is what used to race the
# interpreter's exit), and exits without closing anything.
EXIT = PREAMBLE + r"""
async def main():
    rec = await ffi.Recommender.open(config)
    await rec.observe("u", ffi.Event(item_id="1", timestamp_ms=1, kind="view", item_text=None))
    await rec.recommend("u", 3)
    await rec.stats()
    return rec

rec = asyncio.run(main())
"""

# Releases each object twice by hand (Kotlin's `destroy()`), calls it, then
# lets the collector release it again; prints "released" if all was typed.
RELEASE = PREAMBLE + r"""
rec = asyncio.run(ffi.Recommender.open(config))
handle = ffi.CancelHandle()
for obj, call in ((rec, rec.flush), (handle, handle.cancel)):
    obj.__del__()
    obj.__del__()
    try:
        call()
        sys.exit("a released object accepted a call")
    except ffi.L2recError.Closed:
        pass
del rec, handle
gc.collect()
print("released")
"""
