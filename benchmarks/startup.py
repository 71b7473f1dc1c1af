"""Start-up at full data size, as ratios against baselines measured in the same run (each measurement a fresh
process, baseline and bot alternating; medians of the rounds):

1. COCO train2017 size (118,287 images, 860,001 annotations, ~460 MB): bot's reader (detection/coco_index.py,
   then the split's records) against pycocotools' `COCO(file)` and a plain `json.load`: wall time and the peak
   memory the read adds (peak RSS minus the RSS before it, every process having imported the same modules);
   also the cached index loaded as the other ranks and a restart load it;
2. ADE20K size (20,210 training masks of 683x512, 2,000 validation pairs): bot's start-up checks as finetune-seg
   runs them (listing, headers, label statistics, validation pairs) in one process and in two gloo ranks, against
   a plain numpy pass (decode + np.bincount of every training mask, one thread, no checks); also a restart reading
   the result from the run directory, and the former per-mask path (int64 copy + np.where) on 2,000 masks;
3. COCO val2017 size scoring (5,000 images, 36,781 annotations, 500,000 detections): bot's path as
   `bot evaluate-detect --detections` runs it (read the annotations and the results file, VOC and COCO metrics)
   against pycocotools alone (COCO(file), loadRes(file), evaluate, accumulate, summarize); the COCO APs must agree.

    python benchmarks/startup.py --json benchmarks/results/startup.json            # all three, minutes
    python benchmarks/startup.py --only coco-read --rounds 3

The data is generated once into --data (default $TMPDIR/bot-bench; ~2.7 GB, checked against the free space) by
benchmarks/startup_data.py. Not run by the tests: full-size runs take minutes (the tests run the same code paths on
small generated data).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- children: one measurement per process --------------------------------------------------------------------

def child(what: str, data: Path, extra: str) -> dict:
    import numpy as np  # noqa: F401  every child imports the same modules before it measures
    import pycocotools.coco
    import pycocotools.cocoeval
    import torch  # noqa: F401

    from bot.detection import coco_index, data_coco  # noqa: F401
    from bot.detection.data import load_split
    from bot.detection.evaluate import read_coco_results, score
    from bot.segmentation import data as seg

    coco_root, ade_root = data / "coco", data / "ade20k"
    before = rss_mb()
    tic = time.perf_counter()
    out: dict = {}
    if what == "coco-read:pycocotools":
        with contextlib.redirect_stdout(io.StringIO()):
            pycocotools.coco.COCO(str(coco_root / "annotations" / "instances_train2017.json"))
    elif what == "coco-read:json":
        with open(coco_root / "annotations" / "instances_train2017.json") as f:
            json.load(f)
    elif what == "coco-read:bot":
        split = data_coco.load_coco(coco_root, "train2017", images=False)
        out["annotations"] = int(split.records.index.offsets[-1])
    elif what == "coco-read:save-cache":  # in a child: the parent stays small (a fork would count its pages)
        ann = coco_root / "annotations" / "instances_train2017.json"
        coco_index.save(coco_index.parse(ann), Path(extra) / f"coco_index_{ann.stem}.npz", coco_index.file_key(ann))
    elif what == "coco-read:bot-cached":
        ann = coco_root / "annotations" / "instances_train2017.json"
        index = data_coco.read_index(ann, Path(extra))
        data_coco.CocoRecords(index, None)
        out["annotations"] = int(index.offsets[-1])
    elif what.startswith("coco-worker:"):
        ann = coco_root / "annotations" / "instances_train2017.json"
        if what.endswith("bot"):
            records = data_coco.load_coco(coco_root, "train2017", images=False).records

            def walk():
                for r in records:
                    r.boxes.sum()
        else:
            with contextlib.redirect_stdout(io.StringIO()):
                coco = pycocotools.coco.COCO(str(ann))

            def walk():
                for anns in coco.imgToAnns.values():
                    for a in anns:
                        a["bbox"][0]
        out["worker_dirty_mb"] = _forked_dirty_mb(walk)
    elif what == "ade:numpy":
        from PIL import Image
        masks = sorted((ade_root / "annotations" / "training").glob("*.png"))
        total = np.zeros(256, np.int64)
        for p in masks:
            total += np.bincount(np.asarray(Image.open(p)).ravel(), minlength=256)
        out["masks"] = len(masks)
    elif what in ("ade:bot", "ade:bot-cached"):
        out.update(_ade_startup(ade_root, Path(extra) if extra else None))
    elif what == "ade:former":
        from PIL import Image
        source = seg.parse_data(f"ade20k:{ade_root}")
        masks = sorted((ade_root / "annotations" / "training").glob("*.png"))[:2000]
        k = source.num_classes
        for p in masks:  # the former read_mask + label_counts: int64 copy, np.where twice, per pixel
            arr = np.asarray(Image.open(p)).astype(np.int64)
            m = np.where(arr == 0, source.ignore_index, arr - 1).reshape(-1)
            np.bincount(np.where(m == source.ignore_index, k, m), minlength=k + 1)
        out["masks"] = len(masks)
    elif what == "score:pycocotools":
        with contextlib.redirect_stdout(io.StringIO()):
            gt = pycocotools.coco.COCO(str(coco_root / "annotations" / "instances_val2017.json"))
            dt = gt.loadRes(str(coco_root / "detections_val2017.json"))
            ev = pycocotools.cocoeval.COCOeval(gt, dt, "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out["coco_map"] = float(ev.stats[0])
    elif what == "score:bot":
        split = load_split("coco", coco_root, "val2017", images=False)
        dets = read_coco_results(coco_root / "detections_val2017.json", split)
        metrics, _, _ = score(split, dets)
        out["coco_map"], out["detections"] = metrics["coco_map"], len(dets)
    else:
        raise SystemExit(f"unknown measurement {what}")
    out.update(seconds=time.perf_counter() - tic, added_mb=peak_mb() - before, peak_mb=peak_mb(), before_mb=before)
    return out


def _private_dirty_mb() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("error: no Private_Dirty in /proc/self/smaps_rollup")


def _forked_dirty_mb(walk) -> float:
    """MB of the parent's memory a forked child (a DataLoader worker) makes its own by walking the annotations once:
    pages written (refcounts included) are copied; pages only read stay shared."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        before = _private_dirty_mb()
        walk()
        os.write(write, str(_private_dirty_mb() - before).encode())
        os._exit(0)
    os.close(write)
    got = os.read(read, 64)
    os.waitpid(pid, 0)
    return float(got)


def _ade_startup(root: Path, cache: Path | None, ctx=None) -> dict:
    """What finetune-seg does before step 1 with the data: list both splits, then check_splits."""
    from bot.segmentation import data as seg

    source = seg.parse_data(f"ade20k:{root}")
    with contextlib.redirect_stderr(io.StringIO()):
        train = seg.list_pairs(source, "training", headers=False)
        val = seg.list_pairs(source, "validation", headers=False)
        counts = seg.check_splits(source, train, val, ctx, cache)
    return {"masks": len(train), "pixels": int(counts.sum())}


def _ade_rank(rank: int, port: int, root: Path, queue) -> None:
    import torch
    import torch.distributed as dist

    from bot.engine.distributed import DistContext
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    ctx = DistContext(rank, 2, rank, torch.device("cpu"))
    dist.barrier()
    tic = time.perf_counter()
    out = _ade_startup(root, None, ctx)
    dist.barrier()
    out["seconds"] = time.perf_counter() - tic
    dist.destroy_process_group()
    queue.put((rank, out))


def child_two_ranks(data: Path) -> dict:
    """The ADE20K start-up in two gloo ranks on this machine (each rank its share; time until both are done)."""
    import multiprocessing as mp

    import numpy as np  # noqa: F401
    import torch  # noqa: F401

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ade_rank, args=(r, port, data / "ade20k", queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=3600) for _ in procs)
    for p in procs:
        p.join()
    if got[0]["pixels"] != got[1]["pixels"]:
        raise SystemExit("error: the two ranks disagree on the label counts")
    return {"seconds": max(g["seconds"] for g in got.values()), "pixels": got[0]["pixels"], "masks": got[0]["masks"]}


# ---- parent ---------------------------------------------------------------------------------------------------

def measure(what: str, data: Path, extra: str = "") -> dict:
    """One measurement in a fresh process. The parent holds no data: a forked child's peak RSS would count the
    parent's pages."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", what, "--data", str(data), "--extra", extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"error: {what} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {what:26s} {result['seconds']:8.2f} s  +{result.get('added_mb', 0):7.0f} MB", flush=True)
    return result


def rounds_of(names: list[str], data: Path, rounds: int, extra: dict | None = None) -> dict[str, list[dict]]:
    """Each measurement `rounds` times, alternating (a shared machine drifts: alternation hits all alike)."""
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(rounds):
        for n in names:
            runs[n].append(measure(n, data, (extra or {}).get(n, "")))
    return runs


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def bench_coco_read(data: Path, rounds: int) -> dict:
    from results import entry

    tmp = Path(tempfile.mkdtemp(prefix="bot-coco-cache-"))
    ann = data / "coco" / "annotations" / "instances_train2017.json"
    measure("coco-read:save-cache", data, str(tmp))
    runs = rounds_of(["coco-read:pycocotools", "coco-read:json", "coco-read:bot", "coco-read:bot-cached"], data,
                     rounds, {"coco-read:bot-cached": str(tmp)})
    t = {n: median(r, "seconds") for n, r in runs.items()}
    mem = {n: median(r, "added_mb") for n, r in runs.items()}
    dirty = {n: measure(n, data)["worker_dirty_mb"] for n in ("coco-worker:pycocotools", "coco-worker:bot")}
    detail = {"annotations": runs["coco-read:bot"][0]["annotations"], "file_mb": round(ann.stat().st_size / 1e6),
              "seconds": t, "added_mb": mem, "worker_dirty_mb": dirty}
    return {
        "COCO train2017-size: memory a forked worker dirties walking every image's annotations": entry(
            dirty["coco-worker:pycocotools"], dirty["coco-worker:bot"], "MB private dirty (lower is better)",
            "pycocotools COCO's imgToAnns dicts", 1, **detail),
        "COCO train2017-size annotations read (per rank)": entry(
            1 / t["coco-read:pycocotools"], 1 / t["coco-read:bot"], "reads/s", "pycocotools COCO(file)", rounds,
            **detail),
        "COCO train2017-size annotations read: memory added (per rank)": entry(
            mem["coco-read:pycocotools"], mem["coco-read:bot"], "MB peak RSS added (lower is better)",
            "pycocotools COCO(file)", rounds, **detail),
        "COCO train2017-size annotations read vs json.load": entry(
            1 / t["coco-read:json"], 1 / t["coco-read:bot"], "reads/s", "json.load of the file", rounds, **detail),
        "COCO train2017-size index from the run directory's cache (other ranks, restarts)": entry(
            1 / t["coco-read:pycocotools"], 1 / t["coco-read:bot-cached"], "reads/s", "pycocotools COCO(file)",
            rounds, **detail),
    }


def bench_ade(data: Path, rounds: int) -> dict:
    from results import entry

    cache = Path(tempfile.mkdtemp(prefix="bot-ade-cache-")) / "data_check.json"
    measure("ade:bot", data, str(cache))  # writes the file a restart finds
    runs = rounds_of(["ade:numpy", "ade:bot", "ade:bot-cached"], data, rounds, {"ade:bot-cached": str(cache)})
    two = []
    for _ in range(rounds):
        two.append(child_two_ranks_process(data))
    former = measure("ade:former", data)
    t = {n: median(r, "seconds") for n, r in runs.items()}
    t["ade:bot x2 ranks"] = median(two, "seconds")
    n_masks = runs["ade:bot"][0]["masks"]
    detail = {"train_masks": n_masks, "mask_size": "683x512", "seconds": t,
              "former_ms_per_mask": 1000 * former["seconds"] / former["masks"],
              "bot_ms_per_mask": 1000 * t["ade:bot"] / n_masks}
    return {
        "ADE20K-size start-up checks (20,210 masks + 2,000 val pairs), 1 process": entry(
            1 / t["ade:numpy"], 1 / t["ade:bot"], "start-ups/s",
            "plain numpy pass: decode + np.bincount of each training mask, one thread, no checks", rounds, **detail),
        "ADE20K-size start-up checks, 2 gloo ranks (wall until both are done) vs 1 process": entry(
            1 / t["ade:bot"], 1 / t["ade:bot x2 ranks"], "start-ups/s", "bot in 1 process", rounds, **detail),
        "ADE20K-size start-up, restart (result read from the run directory)": entry(
            1 / t["ade:bot"], 1 / t["ade:bot-cached"], "start-ups/s", "bot's first start", rounds, **detail),
        "ADE20K start-up per training mask: bot's whole pass vs the former label count alone": entry(
            1000 / detail["former_ms_per_mask"], 1000 / detail["bot_ms_per_mask"], "masks/s",
            "the former per-mask label count (int64 copy + np.where), 2,000 masks, one thread", rounds, **detail),
    }


def child_two_ranks_process(data: Path) -> dict:
    return measure("ade:bot-2-ranks", data)


def bench_score(data: Path, rounds: int) -> dict:
    from results import entry

    runs = rounds_of(["score:pycocotools", "score:bot"], data, rounds)
    aps = {r["coco_map"] for rs in runs.values() for r in rs}
    if len(aps) != 1:
        raise SystemExit(f"error: the COCO APs differ: {sorted(aps)}")
    t = {n: median(r, "seconds") for n, r in runs.items()}
    mem = {n: median(r, "added_mb") for n, r in runs.items()}
    detail = {"detections": runs["score:bot"][0]["detections"],
              "coco_map": aps.pop(), "seconds": t, "added_mb": mem}
    return {
        "COCO val2017-size scoring, 500,000 detections (VOC + COCO metrics)": entry(
            1 / t["score:pycocotools"], 1 / t["score:bot"], "scorings/s",
            "pycocotools alone: COCO(file), loadRes(file), evaluate, accumulate, summarize", rounds, **detail),
        "COCO val2017-size scoring: memory added": entry(
            mem["score:pycocotools"], mem["score:bot"], "MB peak RSS added (lower is better)",
            "pycocotools alone", rounds, **detail),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "bot-bench",
                   help="where the generated data is (written there once when missing)")
    p.add_argument("--only", default="coco-read,ade,score", help="comma list of coco-read, ade, score")
    p.add_argument("--rounds", type=int, default=0, help="rounds of each (default: 3 coco-read, 1 ade, 1 score)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--extra", default="", help=argparse.SUPPRESS)
    sys.path.insert(0, str(HERE))
    from results import add_json_option, print_table, write_json
    add_json_option(p)
    a = p.parse_args()
    if a.child == "ade:bot-2-ranks":
        tic = time.perf_counter()
        out = child_two_ranks(a.data)
        out["wall"] = time.perf_counter() - tic
        print(json.dumps(out))
        return
    if a.child:
        print(json.dumps(child(a.child, a.data, a.extra)))
        return
    import startup_data
    from results import cpu_model
    parts = a.only.split(",")
    measurements: dict = {}
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores", flush=True)
    if "coco-read" in parts or "score" in parts:
        startup_data.coco(a.data / "coco")
    if "ade" in parts:
        startup_data.ade20k(a.data / "ade20k")
    for part, bench, default_rounds in (("coco-read", bench_coco_read, 3), ("ade", bench_ade, 1),
                                        ("score", bench_score, 1)):
        if part in parts:
            print(f"{part}:", flush=True)
            measurements.update(bench(a.data, a.rounds or default_rounds))
    print_table(measurements)
    write_json(a.json, measurements)


if __name__ == "__main__":
    main()
