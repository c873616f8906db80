"""The Hugging Face Hub: ``nvc-train publish`` (fetching is ``--checkpoint hf://…`` on every command)."""

from __future__ import annotations

from pathlib import Path

from nvc_train.commands.common import add_overwrite, add_quiet


def add_parsers(sub) -> None:
    s = sub.add_parser("publish", help="upload an integer checkpoint, its model card and manifest to the Hugging Face Hub",
                       description="Check CHECKPOINT on this machine (every conformance record must decode exactly), "
                                   "then commit it to the Hub model repository OWNER/NAME with a README.md model card "
                                   "(Hub YAML header, RD results from --eval) and nvc-train.json, the manifest through "
                                   "which `--checkpoint hf://OWNER/NAME` finds and hash-checks it. Needs a write token "
                                   "(`hf auth login` or HF_TOKEN).")
    s.add_argument("checkpoint", help="integer checkpoint (video or image) from `nvc-train export-integer` or `ptq`")
    s.add_argument("--repo", required=True, metavar="OWNER/NAME", help="Hub model repository (created if missing)")
    s.add_argument("--revision", default=None, metavar="BRANCH", help="branch to commit to (created if missing; "
                                                                         "default: main)")
    s.add_argument("--private", action="store_true", help="create the repository private")
    s.add_argument("--float", dest="float_parent", default=None, metavar="PTH",
                   help="also publish the float parent (.pth.tar from `nvc-train export-float`, the checkpoint's "
                        "architecture)")
    s.add_argument("--eval", dest="eval_dir", default=None, metavar="DIR",
                   help="`nvc-train eval --out-dir` folder with results for this checkpoint (model-index, BD-rate)")
    s.add_argument("--license", default=None, help="licence id for the card (default: bsd-3-clause-clear, "
                                                   "CompressAI's, when started from its zoo; else other)")
    s.add_argument("--base-model", default=None, metavar="OWNER/NAME", help="Hub model it was fine-tuned from")
    s.add_argument("--dataset", action="append", default=[], metavar="OWNER/NAME",
                   help="Hub dataset it was trained on (repeatable; an hf://datasets root is added by itself)")
    s.add_argument("--cross-check", dest="cross_check", default=None, metavar="FILE",
                   help="`nvc-train cross-check --report` file for this checkpoint: the card lists its environments "
                        "(refused if any row differs)")
    add_overwrite(s, "files of the same name with different content")
    s.add_argument("--dry-run", default=None, metavar="DIR", help="write the files to DIR instead of uploading")
    add_quiet(s, "print only the result")
    s.set_defaults(run=publish)


def publish(args) -> int:
    """Integer checkpoint (+ float parent, card, manifest) → a Hugging Face Hub model repository."""
    from nvc_train.hf import publish as P

    if not args.dry_run:
        P.preflight(args.repo, args.revision)
    if not args.quiet:
        print(f"checking {args.checkpoint}: loading and decoding its conformance records on this machine …")
    plan = P.prepare(Path(args.checkpoint), args.repo, args.revision,
                     Path(args.float_parent) if args.float_parent else None,
                     Path(args.eval_dir) if args.eval_dir else None, args.license, args.base_model, args.dataset,
                     Path(args.cross_check) if args.cross_check else None)
    if not args.quiet:
        print(f"conformance PASS: {plan.conformance_checks} checks")
    if args.dry_run:
        for path in P.write_folder(plan, Path(args.dry_run), args.overwrite):
            print(f"wrote {path}")
        return 0
    url, changed = P.upload(plan, private=args.private, overwrite=args.overwrite)
    ref = f"hf://{args.repo}{'@' + args.revision if args.revision else ''}"
    if not changed:
        print(f"{ref} already holds these files; nothing uploaded")
        return 0
    print(f"published {', '.join(changed)} to {ref} ({url})")
    print(f"decode with: nvc-train decode CLIP.nvc -o CLIP.y4m --checkpoint {ref}")
    return 0
