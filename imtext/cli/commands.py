"""The handlers of the commands that use the library alone: data, features, train, eval, index, submit.
Each imports what it needs when it runs, so `imtext --help` stays instant."""

from __future__ import annotations

import argparse

from imtext.cli.config_flags import load_config
from imtext.errors import ImtextError


def connect_ray(args: argparse.Namespace) -> None:
    """Join --address (or RAY_ADDRESS) or start a local Ray with --ray-cpus logical CPUs; Ray's own log goes
    to its files unless --verbose (imtext.ray_setup.configure_console)."""
    from imtext.ray_setup import configure_console, ensure_ray

    configure_console(verbose=getattr(args, "verbose", False))
    ensure_ray(getattr(args, "address", None), num_cpus=getattr(args, "ray_cpus", None))


# ---- data ------------------------------------------------------------------------------------------


def cmd_data_synth(args: argparse.Namespace) -> int:
    from imtext.data.synth import generate

    order_pairs = args.order_pairs if args.order_pairs is not None else max(1, args.images // 10)
    out = generate(
        args.out, n_images=args.images, seed=args.seed, image_size=args.image_size, order_pairs=order_pairs
    )
    return cmd_data_show(argparse.Namespace(data=f"synth:{out}"))


def cmd_data_show(args: argparse.Namespace) -> int:
    from imtext.data import load_pairs
    from imtext.report import print_table

    table = load_pairs(args.data)
    splits = table["split"].to_pylist()
    images = table["image_id"].to_pylist()
    rows = []
    for split in sorted(set(splits)):
        n_img = len({i for i, s in zip(images, splits) if s == split})
        rows.append([split, n_img, splits.count(split)])
    print_table(args.data, ["split", "images", "captions"], rows)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from imtext.data import load_pairs
    from imtext.image.features import compute_features, load_features
    from imtext.report import print_table

    pairs = load_pairs(args.data)
    out = compute_features(
        pairs,
        backbone=args.backbone,
        weights=args.weights,
        image_size=args.image_size,
        out_path=args.out,
        batch_size=args.batch_size,
    )
    ids, matrix, meta = load_features(out)
    print_table(
        "features",
        ["file", "images", "dim", "backbone"],
        [[str(out), len(ids), matrix.shape[1], args.backbone]],
    )
    return 0


# ---- train and eval --------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from imtext.report import print_metrics

    cfg = load_config(args)
    if args.print_config:
        print(cfg.to_yaml())
        return 0
    from imtext.report import epoch_printer

    show = epoch_printer(cfg.train.epochs)  # a line per epoch: loss, samples/s, validation rsum
    if cfg.train.workers == 0:
        from imtext.train.loop import best_metrics, train_local

        _, history = train_local(cfg, on_epoch=show)
        best = best_metrics(history)
    else:
        from imtext.model import read_metrics
        from imtext.train.ray_train import fit

        connect_ray(args)
        result = fit(cfg, resume=args.resume, on_epoch=show)
        best = read_metrics(cfg.train.out).get("best", result.metrics)
    print_metrics(best, title=f"best validation epoch ({best.get('epoch', '?')})")
    from imtext.ray_setup import logs_dir
    from imtext.storage import absolute, join

    print(f"model directory: {absolute(cfg.train.out)}")  # a URI stays a URI
    print(f"curves: {join(absolute(cfg.train.out), 'curves.png')} (loss, validation R@K and rsum per epoch)")
    if logs_dir():
        print(f"Ray's logs: {logs_dir()} (--verbose shows them here)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from imtext.data import load_pairs
    from imtext.data.synth import order_pair_accuracy, order_pair_accuracy_by_axis
    from imtext.errors import DataError, ImtextError
    from imtext.evaluate import embed_split
    from imtext.metrics import PROTOCOLS, bootstrap_interval
    from imtext.model import TwoBranch
    from imtext.report import print_metrics, print_table
    from imtext.train.batches import FeatureLookup, SplitView

    if args.baseline and not args.features:
        raise ImtextError("--baseline fits on precomputed features: give --features (from `imtext features`)")
    model = TwoBranch.load(args.model)
    splits = [args.split] + ([args.train_split, args.val_split] if args.baseline else [])
    pairs = load_pairs(args.data, splits=list(dict.fromkeys(splits)))
    view = SplitView.from_table(pairs, args.split)
    features = None
    if args.features:
        from imtext.image.features import load_features

        ids, matrix, _ = load_features(args.features)
        features = FeatureLookup(ids, matrix)
    img, txt = embed_split(model, view, features)
    protocol = PROTOCOLS[args.protocol]
    metrics = protocol(img, txt, view.caption_image)
    title = f"{args.data} [{args.split}] {len(view.image_ids)} images, {len(view.captions)} captions"
    print_metrics(metrics, title=title)
    try:  # only the synthetic world's `order` split has mirrored pairs
        pair_accuracy = order_pair_accuracy(view.image_ids, view.caption_image, img, txt)
    except DataError:
        pass
    else:
        by_axis = order_pair_accuracy_by_axis(view.image_ids, view.caption_image, img, txt, view.captions)
        axes = ", ".join(f"{axis} {acc:.3f}" for axis, acc in by_axis.items())
        print(
            f"mirrored pairs told apart: {pair_accuracy:.3f} ({axes}; captions scoring their own image above "
            "its mirror twin; 0.5 = word order not read, as for any bag of words)"
        )
        metrics = {**metrics, "order_pair_accuracy": pair_accuracy, "order_pair_accuracy_by_axis": by_axis}
    if args.baseline:
        from imtext.baseline import QUALITY_COLUMNS, RidgeBaseline, quality_row

        train = SplitView.from_table(pairs, args.train_split)
        val = SplitView.from_table(pairs, args.val_split)
        ridge, _ = RidgeBaseline.fit_selected(train, val, features)
        r_img, r_txt = ridge.embed_split(view, features)
        r_metrics = protocol(r_img, r_txt, view.caption_image)
        rows = [
            quality_row("model", metrics, bootstrap_interval(img, txt, view.caption_image)),
            quality_row(
                f"ridge baseline (lambda {ridge.lam:g})",
                r_metrics,
                bootstrap_interval(r_img, r_txt, view.caption_image),
            ),
        ]
        print_table(f"{title}: model beside the linear baseline", QUALITY_COLUMNS, rows)
        ratio = metrics["rsum"] / max(r_metrics["rsum"], 1e-9)
        print(f"model rsum / ridge rsum = {ratio:.3f}")
        metrics = {**metrics, "baseline": r_metrics, "baseline_lambda": ridge.lam}
    if args.json:
        from imtext.atomic import write_json

        write_json(args.json, metrics)
    return 0


# ---- index -----------------------------------------------------------------------------------------


def cmd_index_build(args: argparse.Namespace) -> int:
    from imtext.collection import build_collection

    if not args.no_ray:
        connect_ray(args)
    build_collection(
        args.model,
        args.data,
        args.out,
        shards=args.shards,
        factory=args.factory,
        splits=args.split,
        use_ray=not args.no_ray,
    )
    return 0


def cmd_index_add(args: argparse.Namespace) -> int:
    from imtext.collection import add_to_collection

    if not args.no_ray:
        connect_ray(args)
    add_to_collection(args.index, args.model, args.data, splits=args.split, use_ray=not args.no_ray)
    return 0


def cmd_index_remove(args: argparse.Namespace) -> int:
    from imtext.collection import remove_from_collection

    remove_from_collection(args.index, args.image_id)
    return 0


def cmd_index_search(args: argparse.Namespace) -> int:
    from imtext.collection import Collection, load_indexing_model, read_info
    from imtext.report import print_table

    k = int(args.k)
    if k < 1:
        raise ImtextError(f"-k must be at least 1, got {k}")
    info = read_info(args.index)
    model = load_indexing_model(args.model or info["model_dir"])
    col = Collection.load(args.index, model_fingerprint=model.fingerprint)
    if args.text is not None:
        text = " ".join(args.text.split())
        if not text:
            raise ImtextError("the text query is empty: give a sentence, e.g. --text 'a dog on a beach'")
        hits = col.search_images(model.embed_texts([text]), k)[0]
        print_table(
            f"images for {text!r}",
            ["rank", "score", "image_id", "caption", "path"],
            [[h["rank"], f"{h['score']:.3f}", h["image_id"], h["caption"], h["image_path"]] for h in hits],
        )
        return 0
    from imtext.data import load_image

    query = model.embed_images([load_image(args.image)])
    caps = col.search_captions(query, k)[0]
    print_table(
        f"captions for {args.image}",
        ["rank", "score", "image_id", "caption"],
        [[h["rank"], f"{h['score']:.3f}", h["image_id"], h["caption"]] for h in caps],
    )
    imgs = col.search_images(query, k)[0]
    print_table(
        f"similar images to {args.image}",
        ["rank", "score", "image_id", "path"],
        [[h["rank"], f"{h['score']:.3f}", h["image_id"], h["image_path"]] for h in imgs],
    )
    return 0


# ---- jobs ------------------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    from imtext.jobs import submit

    return submit(
        args.entrypoint,
        address=args.address,
        working_dir=args.working_dir,
        follow=not args.no_wait,
        submission_id=args.submission_id,
    )
