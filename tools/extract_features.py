"""Snippet features of a shard subset with a frozen encoder, at the config's full fidelity: the head stage's
extraction and cache, as a command. Also exports them as one (L, C) .npy per video (G-TAD/OpenTAD's layout).

    python tools/extract_features.py --config lofi/configs/anet_tsm_r18.yaml --encoder ENC.pt
        [--subset validation] [--npy DIR] [key=value ...]

``--encoder`` is any file lofi.models.build_encoder reads (a stage's encoder.pt, torchvision or mmaction2 weights).
The cache lands in head.cache_dir (default work_dirs/NAME/features/SUBSET) and is reused when the encoder file and
the fidelity are unchanged, exactly as in the head stage.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lofi.config import ConfigError, load_config  # noqa: E402
from lofi.data import CorruptLimitError  # noqa: E402
from lofi.engine import distributed as D  # noqa: E402
from lofi.engine.checkpoint import UnsafeFileError  # noqa: E402
from lofi.engine.logger import RunLogger  # noqa: E402
from lofi.feature_export import export_npy  # noqa: E402
from lofi.stages.base import Context  # noqa: E402
from lofi.stages.features import subset_features  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (default: the demo)")
    p.add_argument("--encoder", required=True, help="encoder weights file")
    p.add_argument("--subset", action="append", help="subset(s) to extract (default: the train and val subsets)")
    p.add_argument("--npy", help="also write DIR/ID.npy, (L, C) float32 per video (ID's characters other than "
                                 "[A-Za-z0-9_-] become _)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    try:
        cfg = load_config(args.config, args.overrides, stages=["head"], world_size=D.env_world_size())
    except ConfigError as e:
        print(f"extract_features: {e}", file=sys.stderr)
        return 2
    if not Path(args.encoder).is_file():
        print(f"extract_features: --encoder: no such file {args.encoder}", file=sys.stderr)
        return 2
    info = D.init(cfg.device, cfg.dist.timeout_s)
    log = RunLogger(cfg.run_dir, enabled=info.is_main, tensorboard=False, progress=cfg.log.progress)
    ctx = Context(cfg, info, log)
    try:
        for subset in args.subset or [cfg.data.train_subset, cfg.data.val_subset]:
            entries = subset_features(ctx, subset, args.encoder)
            if args.npy and info.is_main:
                try:
                    export_npy(args.npy, entries)
                except ValueError as e:
                    print(f"extract_features: --npy: {e}", file=sys.stderr)
                    return 2
            log.info(f"{subset}: {len(entries)} videos, features {tuple(next(iter(entries.values()))[0].shape)} (C, L)"
                     + (f"; .npy files in {args.npy}" if args.npy else ""))
    except CorruptLimitError as e:
        print(f"extract_features: {e}", file=sys.stderr)
        return 1
    except UnsafeFileError as e:
        print(f"extract_features: --encoder: {e}", file=sys.stderr)
        return 2
    finally:
        log.close()
        D.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
