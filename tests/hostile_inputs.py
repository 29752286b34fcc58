"""The hostile inputs of issue 11, counted (not a test: a measurement for the closing note).

    PYTHONPATH=$PWD python tests/hostile_inputs.py /tmp/hostile-work

Runs each input in-process and classifies it: clean = exit 2 with one error line and no traceback (exit 0
for the pickles that must load without running), nothing from a file executed, and no special file replaced
(a private FIFO and a private null device node, made with mknod: run as root, never aim it at /dev/null).
"""
import contextlib, io, json, os, sys
from pathlib import Path
import torch
from PIL import Image, PngImagePlugin
os.environ["CLIPSTUDIO_MODEL_CONFIGS"] = str(Path(__file__).resolve().parent / "model_configs")
os.environ["CLIPSTUDIO_OFFLINE"] = "1"
torch.set_num_threads(1)
from clipstudio.cli import main
W = Path(sys.argv[1]); W.mkdir(parents=True, exist_ok=True); os.chdir(W)
T = "clipstudio-test-tiny:random"
FAST = ["--clip", T, "--size", "32", "32", "--steps", "2", "--cutn", "2", "--quiet", "--generator", "pixels", "--layout", "none"]
def png(name, meta):
    info = PngImagePlugin.PngInfo(); info.add_text("clipstudio", meta if isinstance(meta, str) else json.dumps(meta))
    Image.new("RGB", (8, 8)).save(W / name, pnginfo=info); return str(W / name)
class Evil:
    def __reduce__(self): return exec, (f"open('{W}/PWNED','w').write('x')",)
if not (W / "fifo").exists(): os.mkfifo(W / "fifo")
if not (W / "null").exists(): os.mknod(W / "null", 0o666 | __import__("stat").S_IFCHR, os.makedev(1, 3))  # a private /dev/null
(W / "dir").mkdir(exist_ok=True)
S = {"prompt": "a red circle", "clip": [T], "width": 16, "height": 16, "steps": 1, "cutn": 2, "generator": "pixels"}
cases = [
 ("seed 1e30", ["generate", "x", *FAST, "--seed", str(10**30), "-o", "a.png"]),
 ("device cuda", ["generate", "x", *FAST, "--device", "cuda", "-o", "a.png"]),
 ("lr 1e38", ["generate", "x", *FAST, "--lr", "1e38", "-o", "a.png"]),
 ("lr nan", ["generate", "x", *FAST, "--lr", "nan", "-o", "a.png"]),
 ("lr inf", ["generate", "x", *FAST, "--lr", "inf", "-o", "a.png"]),
 ("cut-min 0", ["generate", "x", *FAST, "--cut-min", "0", "-o", "a.png"]),
 ("cut-min 5", ["generate", "x", *FAST, "--cut-min", "5", "-o", "a.png"]),
 ("cut-pow nan", ["generate", "x", *FAST, "--cut-pow", "nan", "-o", "a.png"]),
 ("tv nan", ["generate", "x", *FAST, "--tv", "nan", "-o", "a.png"]),
 ("loss tv=1e300", ["generate", "x", *FAST, "--loss", "tv=1e300", "-o", "a.png"]),
 ("gen-opt nan", ["generate", "x", *FAST, "--gen-opt", "parametrization=nan", "-o", "a.png"]),
 ("warmup -1", ["generate", "x", *FAST, "--warmup", "-1", "-o", "a.png"]),
 ("save-every -1", ["generate", "x", *FAST, "--save-every", "-1", "-o", "a.png"]),
 ("checkpoint-every 0", ["generate", "x", *FAST, "--checkpoint-every", "0", "-o", "a.png"]),
 ("keep 3", ["generate", "x", *FAST, "--keep", "3", "-o", "a.png"]),
 ("checkpoint missing folder", ["generate", "x", *FAST, "--checkpoint", "/no/such/dir/r.pt", "-o", "a.png"]),
 ("cat:1e300", ["generate", "cat:1e300", *FAST, "-o", "a.png"]),
 ("bench repeat 0", ["bench", *FAST, "--repeat", "0"]),
 ("bench repeat -3", ["bench", *FAST, "--repeat", "-3"]),
 ("bench threads -5", ["bench", *FAST, "--threads", "-5"]),
 ("-o dir", ["generate", "x", *FAST, "-o", "dir"]),
 ("-o fifo", ["generate", "x", *FAST, "-o", "fifo"]),
 ("-o device node", ["generate", "x", *FAST, "-o", "null"]),
 ("from list", ["generate", "--from", png("l.png", [1, 2]), "-o", "a.png"]),
 ("from settings list", ["generate", "--from", png("sl.png", {"settings": [1]}), "-o", "a.png"]),
 ("from steps text", ["generate", "--from", png("st.png", {"settings": {**S, "steps": "many"}}), "-o", "a.png"]),
 ("from width list", ["generate", "--from", png("wl.png", {"settings": {**S, "width": [1]}}), "-o", "a.png"]),
 ("from clip str", ["generate", "--from", png("cs.png", {"settings": {**S, "clip": T}}), "-o", "a.png"]),
 ("from prompt int", ["generate", "--from", png("pi.png", {"settings": {**S, "prompt": 5}}), "-o", "a.png"]),
 ("from losses list", ["generate", "--from", png("ll.png", {"settings": {**S, "losses": [1]}}), "-o", "a.png"]),
 ("from loss_options list", ["generate", "--from", png("lo.png", {"settings": {**S, "loss_options": [1]}}), "-o", "a.png"]),
 ("from lr NaN", ["generate", "--from", png("ln.png", json.dumps({"settings": {**S, "lr": float("nan")}})), "-o", "a.png"]),
 ("from seed 1e30", ["generate", "--from", png("sd.png", {"settings": {**S, "seed": 10**30}}), "-o", "a.png"]),
 ("from deep json", ["generate", "--from", png("dj.png", "[" * 100000), "-o", "a.png"]),
 ("from gen opts list", ["generate", "--from", png("go.png", {"settings": {**S, "generator_options": [1]}}), "-o", "a.png"]),
 ("from device cuda", ["generate", "--from", png("dc.png", {"settings": {**S, "device": "cuda"}}), "-o", "a.png"]),
 ("from size 1e9", ["generate", "--from", png("sz.png", {"settings": {**S, "width": 10**9}}), "-o", "a.png"]),
 ("diffuse guidance inf", ["diffuse", "a red circle", "--guidance", "inf", "--steps", "2", "-o", "d.png"]),
 ("diffuse eta nan", ["diffuse", "a red circle", "--eta", "nan", "--steps", "2", "--sampler", "ddim", "-o", "d.png"]),
 ("diffuse -o dir", ["diffuse", "a red circle", "--steps", "2", "-o", "dir"]),
 ("diffuse -o fifo", ["diffuse", "a red circle", "--steps", "2", "-o", "fifo"]),
 ("diffuse n 0", ["diffuse", "a red circle", "--n", "0", "--steps", "2", "-o", "d.png"]),
 ("train clip lr nan", ["train", "clip", "--lr", "nan", "--steps", "1", "--batch", "2", "--out", "c.pt"]),
 ("train clip missing init", ["train", "clip", "--init", "/no/such.pt", "--steps", "1", "--batch", "2", "--out", "c.pt"]),
 ("train diffusion lr nan", ["train", "diffusion", "--lr", "nan", "--steps", "1", "--out", "d.pt"]),
 ("train diffusion lr 1e38", ["train", "diffusion", "--lr", "1e38", "--steps", "1", "--space", "pixel", "--out", "d.pt", "--no-progress"]),
 ("train reward lr nan", ["train", "reward", "--lr", "nan", "--steps", "1", "--out", "r.pt"]),
 ("train reward draft on the checker", ["train", "reward", "--reward", "check", "--method", "draft", "--out", "r.pt"]),
 ("train reward guidance inf", ["train", "reward", "--guidance", "inf", "--out", "r.pt"]),
 ("train reward missing checkpoint", ["train", "reward", "--checkpoint", "/no/such.pt", "--out", "r.pt"]),
]
def vq(name):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from generator_fixtures import write_tiny_vqgan
    ck, cf = write_tiny_vqgan(W / name); c = torch.load(ck, weights_only=True); c["hp"] = Evil(); torch.save(c, ck)
    return {**S, "generator": "vqgan", "generator_options": {"checkpoint": str(ck), "config": str(cf), "trust_checkpoint": True}}
cases.append(("from PNG trust_checkpoint evil pickle", ["generate", "--from", png("ev.png", {"settings": vq("vq1")}), "-o", "a.png", "--quiet"]))
import yaml; (W / "evil.yaml").write_text(yaml.safe_dump(vq("vq2")))
cases.append(("recipe trust_checkpoint evil pickle", ["generate", "--recipe", str(W / "evil.yaml"), "-o", "a.png", "--quiet"]))
torch.save({"config": {"seed": 0, "batch": 2}, "x": Evil()}, W / "d2.pt.state")
torch.save({"config": {"seed": 0}, "x": Evil()}, W / "r2.pt.state")
cases.append(("train reward resume evil state", ["train", "reward", "--resume", "--state", str(W / "r2.pt.state"), "--out", "r2.pt", "--steps", "1", "--no-progress"]))
cases.append(("train diffusion resume evil state", ["train", "diffusion", "--resume", "--state", str(W / "d2.pt.state"), "--out", "d2.pt", "--steps", "1", "--batch", "2", "--space", "pixel", "--no-progress"]))
clean = 0
for name, argv in cases:
    err = io.StringIO(); out = io.StringIO(); tb = None
    (W / "PWNED").unlink(missing_ok=True)
    for special in ("fifo", "null"):  # a case that replaced one must not spoil the next
        p = W / special
        if not (p.is_fifo() or p.is_char_device()):
            p.unlink(missing_ok=True)
            os.mkfifo(p) if special == "fifo" else os.mknod(p, 0o666 | __import__("stat").S_IFCHR, os.makedev(1, 3))
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(argv)
    except SystemExit as e:
        code = e.code
    except BaseException as e:
        code, tb = "exc", f"{type(e).__name__}: {str(e)[:80]}"
    lines = [l for l in err.getvalue().splitlines() if "warning" not in l.lower() and "%|" not in l]
    pwned = (W / "PWNED").exists()
    ok = (not pwned and tb is None and "Traceback" not in err.getvalue() and
          ((code == 2 and len(lines) == 1) or (code == 0 and "evil" in name)))
    ok = ok and (W / "fifo").is_fifo() and (W / "null").is_char_device()
    clean += ok
    print(f"{'CLEAN' if ok else 'BAD  '} {name}: exit {code} {'PWNED ' if pwned else ''}{tb or (lines[-1][:110] if lines else '')}")
print(f"{clean}/{len(cases)} clean")
