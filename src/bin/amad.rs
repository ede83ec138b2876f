//! The amad command line.

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    // A reader that goes away (`amad caption … | head -1`) ends the program by SIGPIPE, as other
    // command-line tools end, instead of Rust's panic on the failed write.
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    #[cfg(unix)]
    private_runtime_dir();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match cli::run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("amad: {e}");
            1
        }
    };
    std::process::exit(code);
}

#[cfg(target_arch = "wasm32")]
fn main() {}

/// Opening a Vulkan instance makes libwayland print "error: XDG_RUNTIME_DIR is invalid or not
/// set in the environment." twice where that variable is unset (servers, containers, cron), and
/// the command then succeeds: an "error" that is none. Where it is unset, point it at a private
/// directory of this user's (mode 0700, as the variable requires), before any thread exists.
#[cfg(unix)]
fn private_runtime_dir() {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let dir = std::env::temp_dir().join(format!("amad-runtime-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    // Only a directory this user owns and no one else can enter.
    let ours = std::fs::symlink_metadata(&dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0);
    if ours {
        std::env::set_var("XDG_RUNTIME_DIR", &dir);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use amad::distill::maps_file;
    use amad::ops::amad::Options;
    use amad::{Error, Gpu, Result};

    const USAGE: &str = "usage: amad <command> [options]

commands:
  caption --model DIR [--beam N] [--max-tokens N] IMAGE...
        one line per image: the file name, a tab, the caption; unreadable files are reported on
        stderr (exit status 1) and the others still caption. DIR is a checkpoint as amad writes
        it or as the Hugging Face Hub holds it (safetensors, sharded, or pytorch_model.bin);
        decoding follows the checkpoint's generation settings unless --beam/--max-tokens say else
  train-teacher --out DIR [--steps N] [--batch B] [--lr LR] [--warmup N] [--decay-to F]
                [--seed S] [--shape-loss W] [--shape-cells Q] [--checkpoint-every N] [--until N]
                [--eval-every N] [--eval-n N]
        trains the default teacher on generated scenes (2,500 steps of batch 32, learning rate
        2e-3), on the caption loss plus W (default 5; 0: none) times a per-patch shape loss that
        teaches the encoder shapes directly (--shape-cells Q: labels for each patch's Q × Q
        sub-cells, Q dividing the patch size; default 2); DIR gets the checkpoint,
        metrics.jsonl and the optimiser state, and a run started again on the same DIR resumes
        from its checkpoint (--until N stops after step N, to continue later). The learning rate
        warms up linearly over N steps (default 100), then follows a cosine to F times its peak
        (default 0.1)
  distill --teacher DIR --out DIR [--method M] [--student-layers L] [--student-width W]
          [--student-heads H] [--steps N] [--batch B] [--lr LR] [--warmup N] [--decay-to F]
          [--alpha A] [--beta B] [--gamma G] [--temperature T] [--tau T] [--detach-weights]
          [--seed S] [--init-from-teacher] [--checkpoint-every N] [--until N] [--images DIR]
          [--val-fraction F] [--eval-every N] [--eval-n N]
        distils a student from the teacher (the bundled one, or a Hub captioner's directory) on
        generated scenes, or on the images in DIR with the teacher's captions as targets (kept in
        OUT/targets.jsonl, so no image is captioned twice); M: ce, kd, one-to-one, amad-mse,
        amad-kl (default), amad-token. The student shares the teacher's vocabulary and image
        geometry; L, W and H are N for both sides or E,D for the encoder and the decoder, and
        default to a quarter of the teacher's width and heads, a third of its encoder layers and a
        sixth of its decoder layers, at least 2 × 64 × 2 (ViT-B + GPT-2: 4,2 layers, 192 wide, 3
        heads). The student starts random (seed S); --init-from-teacher starts each side as wide
        as the teacher's from the teacher's layers (student layer j from the teacher layer the
        losses pair it with) and embeddings. OUT/alignment.json gets the AMAD alignment weights
        at each checkpoint; --eval-every N logs validation scores to OUT/metrics.jsonl: on N
        scenes (--eval-n, default 50), or with --images the agreement (BLEU-4, CIDEr-D, ROUGE-L)
        of the student's captions with the teacher's on the share F of the images held out
        (default 0.1).
        Defaults: 2,400 steps of batch 32 at learning rate 1e-3, scheduled as train-teacher's.
        Resumes like train-teacher.
  eval --model DIR [--split test] [--n N] [--beam N] [--json]
        BLEU-4, CIDEr-D, ROUGE-L and truth of the model's captions of generated scenes
  data export --split train|validation|test --n N --out DIR
        generated scenes as PNG files, captions.jsonl (file, references, scene graph) and the
        vocabulary as tokenizer.json
  loss --input MAPS.safetensors --variant V --output OUT.safetensors [--tau T] [--detach-weights]
        the attention-distillation loss of teacher [B,Ht,q,k] and student [B,Hs,q,k] maps
        (optional mask [B,q,k]); writes loss, grad_student and weights.
        V: mse, kl, token-kl, one-to-one-kl, one-to-one-mse
  bench kernels [--json] [--iters N]
        GFLOP/s of matmul at 512³ and at the teacher's shapes; attention forward+backward time
  bench step [--json] [--iters N] [--batch B]
        time of one teacher training step and one distillation step at the default configs
  bench distill --teacher DIR [--batch B] [--len L] [--iters N] [--json] [--profile]
        a distillation step from the teacher in DIR (a Hub captioner) into its default student
        at batch B (default 16) with captions of L positions (default 16): the teacher's forward
        alone and the whole step (the best of N after a warm-up, default 2), and the peak memory;
        --profile: the step kernel by kernel instead
  bench caption --model DIR [--beam N] [--max-tokens N] [--iters N] [--json] IMAGE...
        per image: encoder time, decoder time per new token and the whole caption's time (the
        best of N runs after a warm-up, default 3), and the process's peak resident memory
  bench profile [--batch B]
        the same two steps kernel by kernel: dispatches and wall time per kernel (a developer's
        breakdown: each dispatch is submitted on its own)
  help  this text";

    /// Flags of one command: `--name value` pairs and bare `--switch`es.
    struct Flags<'a> {
        args: &'a [String],
        used: Vec<bool>,
    }

    impl<'a> Flags<'a> {
        fn new(args: &'a [String]) -> Flags<'a> {
            Flags {
                args,
                used: vec![false; args.len()],
            }
        }

        fn value(&mut self, name: &str) -> Result<Option<&'a str>> {
            let Some(i) = self.args.iter().position(|a| a == name) else {
                return Ok(None);
            };
            let v = self
                .args
                .get(i + 1)
                .filter(|v| !v.starts_with("--"))
                .ok_or_else(|| Error::Invalid(format!("{name} needs a value")))?;
            self.used[i] = true;
            self.used[i + 1] = true;
            Ok(Some(v))
        }

        fn required(&mut self, name: &str) -> Result<&'a str> {
            self.value(name)?
                .ok_or_else(|| Error::Invalid(format!("missing {name}\n\n{USAGE}")))
        }

        fn switch(&mut self, name: &str) -> bool {
            match self.args.iter().position(|a| a == name) {
                Some(i) => {
                    self.used[i] = true;
                    true
                }
                None => false,
            }
        }

        fn number<T: std::str::FromStr>(&mut self, name: &str, default: T) -> Result<T> {
            Ok(self.given_number(name)?.unwrap_or(default))
        }

        /// A number flag's value, or None where the flag is not given (for checks that only apply
        /// to what the user asked for, not to a default).
        fn given_number<T: std::str::FromStr>(&mut self, name: &str) -> Result<Option<T>> {
            self.value(name)?
                .map(|v| {
                    v.parse()
                        .map_err(|_| Error::Invalid(format!("{name}: {v:?} is not a valid number")))
                })
                .transpose()
        }

        /// A student-size flag: N for both the encoder and the decoder, or E,D for each.
        fn sides(&mut self, name: &str) -> Result<Option<(usize, usize)>> {
            let Some(v) = self.value(name)? else {
                return Ok(None);
            };
            let bad = || Error::Invalid(format!("{name}: {v:?} is not N or E,D (whole numbers)"));
            let n = |x: &str| x.trim().parse::<usize>().map_err(|_| bad());
            match v.split_once(',') {
                Some((e, d)) => Ok(Some((n(e)?, n(d)?))),
                None => n(v).map(|x| Some((x, x))),
            }
        }

        /// The arguments no flag consumed (file names); an unknown `--flag` among them is an error.
        fn positionals(self) -> Result<Vec<&'a str>> {
            let mut out = vec![];
            for (a, used) in self.args.iter().zip(&self.used) {
                if !used {
                    if a.starts_with("--") {
                        return Err(Error::Invalid(format!("unknown option {a:?}\n\n{USAGE}")));
                    }
                    out.push(a.as_str());
                }
            }
            Ok(out)
        }

        /// Errors on anything not consumed, so that a typo is never silently ignored.
        fn done(self) -> Result<()> {
            match self.args.iter().zip(&self.used).find(|(_, u)| !**u) {
                Some((a, _)) => Err(Error::Invalid(format!(
                    "unexpected argument {a:?}\n\n{USAGE}"
                ))),
                None => Ok(()),
            }
        }
    }

    fn gpu() -> Result<Gpu> {
        pollster::block_on(Gpu::new())
    }

    pub fn run(args: &[String]) -> Result<()> {
        let rest = args.get(1..).unwrap_or(&[]);
        match args.first().map(String::as_str) {
            Some("loss") => loss(Flags::new(rest)),
            Some("caption") => caption(Flags::new(rest)),
            Some("train-teacher") => train_teacher(Flags::new(rest)),
            Some("distill") => distill(Flags::new(rest)),
            Some("eval") => eval(Flags::new(rest)),
            Some("data") => match rest.first().map(String::as_str) {
                Some("export") => data_export(Flags::new(&rest[1..])),
                _ => Err(Error::Invalid(format!("unknown data command\n\n{USAGE}"))),
            },
            Some("bench") => match rest.first().map(String::as_str) {
                Some("kernels") => {
                    let mut f = Flags::new(&rest[1..]);
                    let json = f.switch("--json");
                    let iters: usize = f.number("--iters", 10)?;
                    f.done()?;
                    if iters == 0 {
                        return Err(Error::Invalid("--iters must be at least 1".into()));
                    }
                    amad::bench::kernels(&gpu()?, iters, json)
                }
                Some("step") => {
                    let mut f = Flags::new(&rest[1..]);
                    let json = f.switch("--json");
                    let iters: usize = f.number("--iters", 3)?;
                    let batch: usize = f.number("--batch", 32)?;
                    f.done()?;
                    if iters == 0 || batch == 0 {
                        return Err(Error::Invalid(
                            "--iters and --batch must be at least 1".into(),
                        ));
                    }
                    amad::bench::step(&gpu()?, batch, iters, json)
                }
                Some("caption") => bench_caption(Flags::new(&rest[1..])),
                Some("distill") => bench_distill(Flags::new(&rest[1..])),
                Some("profile") => {
                    let mut f = Flags::new(&rest[1..]);
                    let batch: usize = f.number("--batch", 32)?;
                    f.done()?;
                    if batch == 0 {
                        return Err(Error::Invalid("--batch must be at least 1".into()));
                    }
                    amad::bench::profile(&gpu()?, batch)
                }
                _ => Err(Error::Invalid(format!("unknown benchmark\n\n{USAGE}"))),
            },
            Some("help") | Some("--help") | Some("-h") | None => {
                println!("{USAGE}");
                Ok(())
            }
            Some(other) => Err(Error::Invalid(format!(
                "unknown command {other:?}\n\n{USAGE}"
            ))),
        }
    }

    fn caption(mut f: Flags) -> Result<()> {
        use amad::model::captioner::Captioner;
        let dir = f.required("--model")?;
        let beams: Option<usize> = f.given_number("--beam")?;
        let max_new_tokens: Option<usize> = f.given_number("--max-tokens")?;
        let images = f.positionals()?;
        if images.is_empty() {
            return Err(Error::Invalid(format!("no images given\n\n{USAGE}")));
        }
        if beams == Some(0) || max_new_tokens == Some(0) {
            return Err(Error::Invalid(
                "--beam and --max-tokens must be at least 1".into(),
            ));
        }
        let gpu = gpu()?;
        let captioner = Captioner::load(&gpu, std::path::Path::new(dir))?;
        // The checkpoint's own generation settings, where the command line does not override them.
        let generation = captioner.generation.overridden(beams, max_new_tokens);
        let mut failed = 0;
        for path in &images {
            let name = std::path::Path::new(path)
                .file_name()
                .map_or(path.to_string(), |n| n.to_string_lossy().into_owned());
            let result = std::fs::read(path)
                .map_err(|e| Error::Invalid(format!("{path}: {e}")))
                .and_then(|bytes| amad::data::image::decode(&bytes, path))
                .and_then(|pixels| {
                    pollster::block_on(captioner.caption(&gpu, &pixels, generation))
                });
            match result {
                Ok(text) => println!("{name}\t{text}"),
                Err(e) => {
                    eprintln!("amad: {e}");
                    failed += 1;
                }
            }
        }
        if failed > 0 {
            return Err(Error::Invalid(format!(
                "{failed} of {} images could not be captioned",
                images.len()
            )));
        }
        Ok(())
    }

    fn train_teacher(mut f: Flags) -> Result<()> {
        use amad::model::captioner::Captioner;
        use amad::model::{preprocessor, Config, Model};
        use amad::train::train_captioner;
        let out = std::path::PathBuf::from(f.required("--out")?);
        // 2,500 steps of batch 32, chosen to fit the hour on lavapipe on the 2-core Xeons (51:15
        // and 58:00 measured there at the two learning rates; 4,000 steps took 2:07:41). The shape
        // loss's weight won a sweep of recipes; shape labels per 2 × 2 sub-cell of each patch took
        // validation truth from about 0.8 to 0.9. At 2,500 steps a peak of 2e-3 scored 0.930 on
        // 500 validation scenes against 0.914 to 0.918 for three seeds at 1.5e-3 (docs/teacher.md).
        let opts = run_options(&mut f, &amad::train::RunOptions::TRAIN_TEACHER)?;
        let seed: u64 = f.number("--seed", 1)?;
        let weight: f32 = f.number("--shape-loss", 5.0)?;
        let given_cells: Option<usize> = f.given_number("--shape-cells")?;
        if let Some(cells) = given_cells.filter(|_| weight == 0.0) {
            return Err(Error::Invalid(format!(
                "--shape-cells {cells} sets the shape loss's labels, but --shape-loss 0 turns that loss off; drop one of them"
            )));
        }
        let cells = given_cells.unwrap_or(2);
        let shape_loss = (weight != 0.0).then_some(amad::train::ShapeTargets { weight, cells });
        f.done()?;
        let gpu = gpu()?;
        let c = train_captioner(&gpu, &out, &opts, shape_loss, || {
            let tokenizer = amad::data::captions::tokenizer();
            let cfg = Config::teacher(tokenizer.len(), 16);
            Ok(Captioner {
                model: Model::new(&gpu, cfg, seed)?,
                tokenizer,
                preprocess: preprocessor::default_for(64, 8),
                generation: amad::model::generate::Generation::default(),
            })
        })?;
        print_validation(&gpu, &c, &amad::train::Source::Scenes)
    }

    /// Validates a freshly trained model on `source` (200 scenes, or the held-out images) and
    /// prints the scores.
    fn print_validation(
        gpu: &Gpu,
        c: &amad::model::captioner::Captioner,
        source: &amad::train::Source,
    ) -> Result<()> {
        if let Some((_, shown)) = pollster::block_on(source.validate(gpu, c, 200))? {
            println!("{shown}");
        }
        Ok(())
    }

    /// The run options shared by train-teacher and distill.
    fn run_options(f: &mut Flags, d: &amad::train::RunOptions) -> Result<amad::train::RunOptions> {
        Ok(amad::train::RunOptions {
            steps: f.number("--steps", d.steps)?,
            until: f.given_number("--until")?,
            batch: f.number("--batch", d.batch)?,
            lr: f.number("--lr", d.lr)?,
            warmup: f.number("--warmup", d.warmup)?,
            decay_to: f.number("--decay-to", d.decay_to)?,
            checkpoint_every: f.number("--checkpoint-every", d.checkpoint_every)?,
            max_norm: d.max_norm,
            eval_every: f.number("--eval-every", d.eval_every)?,
            eval_n: f.number("--eval-n", d.eval_n)?,
        })
    }

    fn distill(mut f: Flags) -> Result<()> {
        use amad::distill::DistillConfig;
        use amad::model::captioner::Captioner;
        use amad::model::{Config, Model, StudentShape};
        let teacher_dir = f.required("--teacher")?;
        let out = std::path::PathBuf::from(f.required("--out")?);
        let method = f
            .value("--method")?
            .unwrap_or(amad::distill::DEFAULT_METHOD);
        let layers = f.sides("--student-layers")?;
        let width = f.sides("--student-width")?;
        let heads = f.sides("--student-heads")?;
        let opts = run_options(&mut f, &amad::train::RunOptions::DISTILL)?;
        let d = DistillConfig::default();
        let cfg = DistillConfig {
            alpha: f.number("--alpha", d.alpha)?,
            beta: f.number("--beta", d.beta)?,
            gamma: f.number("--gamma", d.gamma)?,
            temperature: f.number("--temperature", d.temperature)?,
            ..d
        };
        let tau: f32 = f.number("--tau", amad::distill::DEFAULT_TAU)?;
        let detach_weights = f.switch("--detach-weights");
        let init_from_teacher = f.switch("--init-from-teacher");
        let seed: u64 = f.number("--seed", amad::distill::DEFAULT_SEED)?;
        let images = f.value("--images")?;
        let val_fraction: f64 = f.number("--val-fraction", amad::train::batch::VAL_FRACTION)?;
        f.done()?;
        let cfg = cfg.with_method(method, tau, detach_weights)?;
        let gpu = gpu()?;
        let teacher = Captioner::load(&gpu, std::path::Path::new(teacher_dir))?;
        let shape = StudentShape::default_for(&teacher.model.cfg).overridden(layers, width, heads);
        shape.check()?;
        if init_from_teacher {
            // Before the teacher captions anything: a student that cannot start from it is refused.
            amad::distill::init::check(
                &teacher.model.cfg,
                &Config::student_of(&teacher.model.cfg, &shape),
            )?;
        }
        let source = match images {
            None => amad::train::Source::Scenes,
            Some(dir) => {
                let all = image_targets(&gpu, &teacher, dir, &out)?;
                let (train, held_out) = all.split(val_fraction)?;
                eprintln!(
                    "{} images to train on, {} held out for validation",
                    train.names.len(),
                    held_out.names.len()
                );
                amad::train::Source::Images {
                    train: Box::new(train),
                    held_out: Box::new(held_out),
                }
            }
        };
        let c = amad::train::distill_captioner(&gpu, &teacher, &out, &opts, &cfg, &source, || {
            let scfg = Config::student_of(&teacher.model.cfg, &shape);
            let model = if init_from_teacher {
                let (m, copied) = pollster::block_on(amad::distill::init::from_teacher(
                    &gpu,
                    &teacher.model,
                    scfg,
                    seed,
                ))?;
                eprintln!(
                    "{copied} of the student's {} tensors start from the teacher's",
                    m.layout.specs.len()
                );
                m
            } else {
                Model::new(&gpu, scfg, seed)?
            };
            Ok(Captioner {
                model,
                tokenizer: teacher.tokenizer.clone(),
                preprocess: teacher.preprocess.clone(),
                generation: teacher.generation,
            })
        })?;
        print_validation(&gpu, &c, &source)
    }

    /// The teacher's captions of the images in `dir` (non-recursive, sorted by name), kept in
    /// `out`/targets.jsonl: captions already there (matched by the image's bytes) are reused, so
    /// a resumed or repeated run captions nothing twice. Unreadable files are reported and
    /// skipped.
    fn image_targets(
        gpu: &Gpu,
        teacher: &amad::model::captioner::Captioner,
        dir: &str,
        out: &std::path::Path,
    ) -> Result<amad::train::batch::ImageTargets> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| Error::Invalid(format!("--images {dir}: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        let mut files = vec![];
        for p in paths {
            match std::fs::read(&p) {
                Ok(b) => files.push((p.display().to_string(), b)),
                Err(e) => eprintln!("amad: {}: {e} (skipped)", p.display()),
            }
        }
        let path = out.join("targets.jsonl");
        // A line that does not parse is captioned again, never trusted.
        let cached: std::collections::HashMap<String, String> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                Some((
                    v["key"].as_str()?.to_string(),
                    v["caption"].as_str()?.to_string(),
                ))
            })
            .collect();
        let reused = files
            .iter()
            .filter(|(_, b)| cached.contains_key(&amad::train::batch::image_key(b)))
            .count();
        eprintln!(
            "the teacher captions {} files in {dir} ({reused} captions reused from {})…",
            files.len() - reused,
            path.display()
        );
        let began = std::time::Instant::now();
        let (t, skipped) = pollster::block_on(amad::train::batch::ImageTargets::caption(
            gpu,
            teacher,
            &files,
            &cached,
            |done, total| {
                if total > 0 {
                    eprint!(
                        "\rcaptioned {done}/{total} ({:.0} s)   ",
                        began.elapsed().as_secs_f64()
                    );
                }
            },
        ))?;
        eprintln!();
        for s in &skipped {
            eprintln!("amad: {s} (skipped)");
        }
        std::fs::create_dir_all(out)
            .map_err(|e| Error::Invalid(format!("{}: {e}", out.display())))?;
        let lines: String = (0..t.names.len())
            .map(|i| {
                format!(
                    "{}\n",
                    serde_json::json!({"file": t.names[i], "key": t.keys[i], "caption": t.captions[i]})
                )
            })
            .collect();
        std::fs::write(&path, lines)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        eprintln!(
            "{} image{}, their captions in {}",
            t.names.len(),
            if t.names.len() == 1 { "" } else { "s" },
            path.display()
        );
        Ok(t)
    }

    fn bench_distill(mut f: Flags) -> Result<()> {
        let dir = f.required("--teacher")?;
        let batch: usize = f.number("--batch", 16)?;
        let len: usize = f.number("--len", 16)?;
        let iters: usize = f.number("--iters", 2)?;
        let json = f.switch("--json");
        let profile = f.switch("--profile");
        f.done()?;
        if batch == 0 || len == 0 {
            return Err(Error::Invalid(format!(
                "bench distill needs a --batch and a --len of 1 or more\n\n{USAGE}"
            )));
        }
        let gpu = gpu()?;
        let teacher = amad::model::captioner::Captioner::load(&gpu, std::path::Path::new(dir))?;
        amad::bench::distill(&gpu, &teacher, batch, len, iters, json, profile)
    }

    fn bench_caption(mut f: Flags) -> Result<()> {
        use amad::model::captioner::Captioner;
        let dir = f.required("--model")?;
        let beams: Option<usize> = f.given_number("--beam")?;
        let max_new_tokens: Option<usize> = f.given_number("--max-tokens")?;
        let iters: usize = f.number("--iters", 3)?;
        let json = f.switch("--json");
        let paths = f.positionals()?;
        if paths.is_empty() || iters == 0 || beams == Some(0) || max_new_tokens == Some(0) {
            return Err(Error::Invalid(format!(
                "bench caption needs images, and --iters, --beam and --max-tokens of 1 or more\n\n{USAGE}"
            )));
        }
        let images = paths
            .iter()
            .map(|p| {
                let bytes = std::fs::read(p).map_err(|e| Error::Invalid(format!("{p}: {e}")))?;
                let name = std::path::Path::new(p)
                    .file_name()
                    .map_or(p.to_string(), |n| n.to_string_lossy().into_owned());
                Ok((name, amad::data::image::decode(&bytes, p)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let gpu = gpu()?;
        let c = Captioner::load(&gpu, std::path::Path::new(dir))?;
        let generation = c.generation.overridden(beams, max_new_tokens);
        amad::bench::caption(&gpu, &c, &images, generation, iters, json)
    }

    fn eval(mut f: Flags) -> Result<()> {
        use amad::data::scenes::Split;
        use amad::model::captioner::Captioner;
        use amad::model::generate::Generation;
        let dir = f.required("--model")?;
        let name = f.value("--split")?.unwrap_or("test");
        let split = Split::parse(name).ok_or_else(|| {
            Error::Invalid(format!(
                "unknown split {name:?}; choose train, validation or test"
            ))
        })?;
        let n: usize = f.number("--n", 200)?;
        let beams: usize = f.number("--beam", 1)?;
        let json = f.switch("--json");
        f.done()?;
        if n == 0 || beams == 0 {
            return Err(Error::Invalid("--n and --beam must be at least 1".into()));
        }
        let gpu = gpu()?;
        let c = Captioner::load(&gpu, std::path::Path::new(dir))?;
        let e = pollster::block_on(amad::train::evaluate(
            &gpu,
            &c,
            split,
            n,
            Generation {
                beams,
                ..Generation::default()
            },
        ))?;
        if json {
            println!(
                "{}",
                serde_json::json!({"model": dir, "split": name, "n": e.n, "bleu4": e.bleu4, "cider_d": e.cider_d, "rouge_l": e.rouge_l, "truth": e.truth})
            );
        } else {
            println!(
                "{name} ({} scenes): BLEU-4 {:.4}  CIDEr-D {:.4}  ROUGE-L {:.4}  truth {:.4}",
                e.n, e.bleu4, e.cider_d, e.rouge_l, e.truth
            );
        }
        Ok(())
    }

    fn data_export(mut f: Flags) -> Result<()> {
        use amad::data::scenes::Split;
        let name = f.required("--split")?;
        let split = Split::parse(name).ok_or_else(|| {
            Error::Invalid(format!(
                "unknown split {name:?}; choose train, validation or test"
            ))
        })?;
        let n: usize = f.number("--n", 200)?;
        let out = f.required("--out")?;
        f.done()?;
        amad::data::export::export(split, n, std::path::Path::new(out), name)?;
        println!("wrote {n} {name} scenes to {out}");
        Ok(())
    }

    fn loss(mut f: Flags) -> Result<()> {
        let input = f.required("--input")?;
        let output = f.required("--output")?;
        let variant = maps_file::parse_variant(f.required("--variant")?)?;
        let tau: f32 = f.number("--tau", amad::distill::DEFAULT_TAU)?;
        let detach_weights = f.switch("--detach-weights");
        f.done()?;
        let bytes = std::fs::read(input).map_err(|e| Error::Invalid(format!("{input}: {e}")))?;
        let gpu = gpu()?;
        let out = pollster::block_on(maps_file::loss_file(
            &gpu,
            &bytes,
            input,
            Options {
                variant,
                tau,
                detach_weights,
            },
        ))?;
        std::fs::write(output, out).map_err(|e| Error::Invalid(format!("{output}: {e}")))?;
        println!("wrote {output}");
        Ok(())
    }
}
