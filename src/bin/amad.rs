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
    let code = match cli::run() {
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
    use amad::model::captioner::Captioner;
    use amad::model::Precision;
    use amad::train::RunOptions;
    use amad::{Error, Gpu, Result};
    use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
    use std::path::{Path, PathBuf};

    /// amad: Attention Map Alignment Distillation of image-captioning transformers, on wgpu.
    #[derive(Parser)]
    #[command(name = "amad", version, arg_required_else_help = true)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// One line per image: the file name, a tab, the caption.
        ///
        /// Unreadable files are reported on stderr (exit status 1) and the others still caption.
        /// The model is a checkpoint as amad writes it or as the Hugging Face Hub holds it
        /// (safetensors, sharded, or pytorch_model.bin); decoding follows the checkpoint's
        /// generation settings unless --beam or --max-tokens say otherwise.
        Caption(CaptionArgs),
        /// Trains the default teacher on generated scenes.
        ///
        /// The loss is the caption loss plus a per-patch shape loss that teaches the encoder
        /// shapes directly. OUT gets the checkpoint, metrics.jsonl and the optimiser state, and a
        /// run started again on the same OUT resumes from its checkpoint.
        TrainTeacher(TrainTeacherArgs),
        /// Distils a student from a teacher, on generated scenes or on your images.
        ///
        /// The teacher is the bundled one or a Hub captioner's directory. With --images the
        /// teacher captions each image once (kept in OUT/targets.jsonl by teacher and image) and
        /// those captions are the targets. The student shares the teacher's vocabulary and image
        /// geometry. OUT/alignment.json gets the AMAD alignment weights at each checkpoint. A run
        /// started again on the same OUT resumes from its checkpoint.
        Distill(DistillArgs),
        /// BLEU-4, CIDEr-D, ROUGE-L and truth of a model's captions of generated scenes.
        Eval(EvalArgs),
        /// Generated scenes as files.
        #[command(subcommand)]
        Data(DataCommand),
        /// The attention-distillation loss of teacher and student maps in a safetensors file.
        ///
        /// The input holds teacher [B,Ht,q,k] and student [B,Hs,q,k] maps and optionally a mask
        /// [B,q,k]; the output gets loss, grad_student and weights.
        Loss(LossArgs),
        /// Benchmarks that print figures.
        #[command(subcommand)]
        Bench(BenchCommand),
    }

    /// At least 1.
    fn positive(s: &str) -> std::result::Result<usize, String> {
        match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{s:?} is not a whole number of 1 or more")),
        }
    }

    /// A student size: N for both the encoder and the decoder, or E,D for each.
    fn sides(s: &str) -> std::result::Result<(usize, usize), String> {
        let bad = || format!("{s:?} is not N or E,D (whole numbers)");
        let n = |x: &str| x.trim().parse::<usize>().map_err(|_| bad());
        match s.split_once(',') {
            Some((e, d)) => Ok((n(e)?, n(d)?)),
            None => n(s).map(|x| (x, x)),
        }
    }

    fn split(s: &str) -> std::result::Result<amad::data::scenes::Split, String> {
        amad::data::scenes::Split::parse(s)
            .ok_or_else(|| format!("{s:?}: choose train, validation or test"))
    }

    #[derive(Args)]
    struct CaptionArgs {
        /// The checkpoint's directory.
        #[arg(long, value_name = "DIR")]
        model: PathBuf,
        /// Beams of the beam search (1: greedy).
        #[arg(long, value_name = "N", value_parser = positive)]
        beam: Option<usize>,
        /// The most tokens a caption gets.
        #[arg(long, value_name = "N", value_parser = positive)]
        max_tokens: Option<usize>,
        /// Holds the linear maps' weights and the token embedding in f16: half the memory of a
        /// ViT-B + GPT-2 model, with captions from its weights rounded to half precision.
        #[arg(long)]
        half_weights: bool,
        /// Captioned together, up to four at a time (each token's rows: images × beams).
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<PathBuf>,
    }

    /// The options of a training run, shared by train-teacher and distill. Each command's
    /// defaults are its `RunOptions` constant, set by [`with_run_defaults`].
    #[derive(Args)]
    struct RunArgs {
        /// The run's length in steps: the learning-rate schedule spans it.
        #[arg(long, value_name = "N", value_parser = positive)]
        steps: Option<usize>,
        /// Stops after step N, to continue later from the checkpoint.
        #[arg(long, value_name = "N")]
        until: Option<u64>,
        /// Examples per step.
        #[arg(long, value_name = "B", value_parser = positive)]
        batch: Option<usize>,
        /// The peak learning rate.
        #[arg(long, value_name = "LR")]
        lr: Option<f32>,
        /// Steps of linear warm-up; then a cosine to --decay-to times the peak.
        #[arg(long, value_name = "N")]
        warmup: Option<u64>,
        /// Where the cosine ends, as a fraction of the peak learning rate.
        #[arg(long, value_name = "F")]
        decay_to: Option<f32>,
        /// Writes the checkpoint every N steps.
        #[arg(long, value_name = "N", value_parser = positive)]
        checkpoint_every: Option<usize>,
        /// Logs validation scores to OUT/metrics.jsonl every N steps (0: never).
        #[arg(long, value_name = "N")]
        eval_every: Option<u64>,
        /// Scenes per validation.
        #[arg(long, value_name = "N", value_parser = positive)]
        eval_n: Option<usize>,
    }

    impl RunArgs {
        fn options(&self, d: &RunOptions) -> RunOptions {
            RunOptions {
                steps: self.steps.map_or(d.steps, |n| n as u64),
                until: self.until,
                batch: self.batch.unwrap_or(d.batch),
                lr: self.lr.unwrap_or(d.lr),
                warmup: self.warmup.unwrap_or(d.warmup),
                decay_to: self.decay_to.unwrap_or(d.decay_to),
                checkpoint_every: self
                    .checkpoint_every
                    .map_or(d.checkpoint_every, |n| n as u64),
                max_norm: d.max_norm,
                eval_every: self.eval_every.unwrap_or(d.eval_every),
                eval_n: self.eval_n.unwrap_or(d.eval_n),
            }
        }
    }

    /// Shows a command's run defaults (`d`) in its help: the one place they are set is `d`.
    fn with_run_defaults(c: clap::Command, d: &RunOptions) -> clap::Command {
        let defaults = [
            ("steps", d.steps.to_string()),
            ("batch", d.batch.to_string()),
            ("lr", d.lr.to_string()),
            ("warmup", d.warmup.to_string()),
            ("decay_to", d.decay_to.to_string()),
            ("checkpoint_every", d.checkpoint_every.to_string()),
            ("eval_every", d.eval_every.to_string()),
            ("eval_n", d.eval_n.to_string()),
        ];
        defaults
            .into_iter()
            .fold(c, |c, (id, v)| c.mut_arg(id, |a| a.default_value(v)))
    }

    #[derive(Args)]
    struct TrainTeacherArgs {
        /// The run's directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[command(flatten)]
        run: RunArgs,
        /// The seed of the initial weights.
        #[arg(long, value_name = "S", default_value_t = 1)]
        seed: u64,
        /// The shape loss's weight (0: none).
        #[arg(long, value_name = "W", default_value_t = 5.0)]
        shape_loss: f32,
        /// Shape labels for each patch's Q × Q sub-cells (Q divides the patch size).
        #[arg(long, value_name = "Q")]
        shape_cells: Option<usize>,
    }

    /// Sub-cells per patch side of the shape labels where --shape-cells is not given.
    const SHAPE_CELLS: usize = 2;

    #[derive(Args)]
    struct DistillArgs {
        /// The teacher's directory.
        #[arg(long, value_name = "DIR")]
        teacher: PathBuf,
        /// Holds the teacher's linear maps' weights and token embedding in f16 (half the memory of
        /// a ViT-B + GPT-2 teacher); it then teaches from its weights rounded to half precision. Keep
        /// it the same over a run: captions of --images are kept per teacher and precision, and a
        /// run is resumed only with the teacher that captioned its images.
        #[arg(long)]
        teacher_half_weights: bool,
        /// The run's directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// ce, kd, one-to-one, amad-mse, amad-kl or amad-token.
        #[arg(long, value_name = "M", default_value = amad::distill::DEFAULT_METHOD)]
        method: String,
        /// Student layers, N or E,D (default: a third of the teacher's encoder layers and a
        /// sixth of its decoder layers, at least 2).
        #[arg(long, value_name = "L", value_parser = sides)]
        student_layers: Option<(usize, usize)>,
        /// Student width, N or E,D (default: a quarter of the teacher's, at least 64).
        #[arg(long, value_name = "W", value_parser = sides)]
        student_width: Option<(usize, usize)>,
        /// Student heads, N or E,D (default: a quarter of the teacher's, at least 2).
        #[arg(long, value_name = "H", value_parser = sides)]
        student_heads: Option<(usize, usize)>,
        #[command(flatten)]
        run: RunArgs,
        /// α: the weight of the caption loss.
        #[arg(long, value_name = "A", default_value_t = amad::distill::DistillConfig::default().alpha)]
        alpha: f32,
        /// β: the weight of output distillation (KD).
        #[arg(long, value_name = "B", default_value_t = amad::distill::DistillConfig::default().beta)]
        beta: f32,
        /// γ: the weight of the attention term.
        #[arg(long, value_name = "G", default_value_t = amad::distill::DistillConfig::default().gamma)]
        gamma: f32,
        /// The KD temperature.
        #[arg(long, value_name = "T", default_value_t = amad::distill::DistillConfig::default().temperature)]
        temperature: f32,
        /// τ: the temperature of the alignment weights.
        #[arg(long, value_name = "T", default_value_t = amad::distill::DEFAULT_TAU)]
        tau: f32,
        /// Alignment weights pass no gradient.
        #[arg(long)]
        detach_weights: bool,
        /// The seed of the student's initial weights.
        #[arg(long, value_name = "S", default_value_t = amad::distill::DEFAULT_SEED)]
        seed: u64,
        /// Starts each side as wide as the teacher's from the teacher's layers (student layer j
        /// from the teacher layer the losses pair it with) and embeddings.
        #[arg(long, conflicts_with = "student_init")]
        init_from_teacher: bool,
        /// Starts from the student checkpoint in DIR (one amad or amad_torch wrote for this
        /// teacher) instead of a new one; its sizes are its own.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["student_layers", "student_width", "student_heads"])]
        student_init: Option<PathBuf>,
        /// Distils on the images in DIR, with the teacher's captions as targets.
        #[arg(long, value_name = "DIR")]
        images: Option<PathBuf>,
        /// With --images: the share of the images held out for validation, where the student's
        /// agreement with the teacher (BLEU-4, CIDEr-D, ROUGE-L) is logged.
        #[arg(long, value_name = "F", default_value_t = amad::train::batch::VAL_FRACTION)]
        val_fraction: f64,
    }

    #[derive(Args)]
    struct EvalArgs {
        /// The checkpoint's directory.
        #[arg(long, value_name = "DIR")]
        model: PathBuf,
        /// train, validation or test.
        #[arg(long, default_value = "test", value_parser = split)]
        split: amad::data::scenes::Split,
        /// Scenes to caption.
        #[arg(long, value_name = "N", default_value_t = 200, value_parser = positive)]
        n: usize,
        /// Beams of the beam search (1: greedy).
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = positive)]
        beam: usize,
        /// One JSON line instead of text.
        #[arg(long)]
        json: bool,
    }

    #[derive(Subcommand)]
    enum DataCommand {
        /// Generated scenes as PNG files, captions.jsonl (file, references, scene graph) and the
        /// vocabulary as tokenizer.json.
        Export {
            /// train, validation or test.
            #[arg(long, value_parser = split)]
            split: amad::data::scenes::Split,
            /// Scenes to write.
            #[arg(long, value_name = "N", default_value_t = 200)]
            n: usize,
            /// The directory to write them to.
            #[arg(long, value_name = "DIR")]
            out: PathBuf,
        },
    }

    #[derive(Args)]
    struct LossArgs {
        /// The maps: teacher, student and optionally mask.
        #[arg(long, value_name = "MAPS.safetensors")]
        input: PathBuf,
        /// mse, kl, token-kl, one-to-one-kl or one-to-one-mse.
        #[arg(long, value_name = "V", value_parser = maps_file::parse_variant)]
        variant: amad::ops::amad::Variant,
        /// Where the loss, grad_student and weights go.
        #[arg(long, value_name = "OUT.safetensors")]
        output: PathBuf,
        /// τ: the temperature of the alignment weights.
        #[arg(long, value_name = "T", default_value_t = amad::distill::DEFAULT_TAU)]
        tau: f32,
        /// Alignment weights pass no gradient.
        #[arg(long)]
        detach_weights: bool,
    }

    #[derive(Subcommand)]
    enum BenchCommand {
        /// GFLOP/s of matmul at 512³ and at the teacher's shapes; attention forward + backward.
        Kernels {
            #[arg(long)]
            json: bool,
            #[arg(long, value_name = "N", default_value_t = 10, value_parser = positive)]
            iters: usize,
            /// Only the cases whose names contain this (e.g. vit_qkv_fwd, attention)
            #[arg(long, value_name = "NAME")]
            only: Option<String>,
        },
        /// One teacher training step and one distillation step at the default configs.
        Step {
            #[arg(long)]
            json: bool,
            #[arg(long, value_name = "N", default_value_t = 3, value_parser = positive)]
            iters: usize,
            #[arg(long, value_name = "B", default_value_t = 32, value_parser = positive)]
            batch: usize,
        },
        /// A distillation step from a Hub captioner into its default student.
        ///
        /// The teacher's forward alone and the whole step (the best of N after a warm-up), and
        /// the peak memory; --profile: the step kernel by kernel instead.
        Distill {
            /// The teacher's directory.
            #[arg(long, value_name = "DIR")]
            teacher: PathBuf,
            /// Holds the teacher's linear maps' weights and token embedding in f16.
            #[arg(long)]
            teacher_half_weights: bool,
            #[arg(long, value_name = "B", default_value_t = 16, value_parser = positive)]
            batch: usize,
            /// Caption positions.
            #[arg(long, value_name = "L", default_value_t = 16, value_parser = positive)]
            len: usize,
            #[arg(long, value_name = "N", default_value_t = 2, value_parser = positive)]
            iters: usize,
            #[arg(long)]
            json: bool,
            #[arg(long)]
            profile: bool,
        },
        /// Per image: encoder time, decoder time per new token, the whole caption's time (the
        /// best of N runs after a warm-up), and the process's peak resident memory.
        Caption {
            #[command(flatten)]
            caption: CaptionArgs,
            #[arg(long, value_name = "N", default_value_t = 3, value_parser = positive)]
            iters: usize,
            #[arg(long)]
            json: bool,
            /// Instead, the first image's caption kernel by kernel (each dispatch on its own).
            #[arg(long)]
            profile: bool,
        },
        /// The teacher and distillation steps kernel by kernel: dispatches and wall time per
        /// kernel (each dispatch is submitted on its own).
        Profile {
            #[arg(long, value_name = "B", default_value_t = 32, value_parser = positive)]
            batch: usize,
        },
    }

    fn gpu() -> Result<Gpu> {
        pollster::block_on(Gpu::new())
    }

    /// Parses the command line (help and usage errors end the process here, as clap does) and
    /// runs the command.
    pub fn run() -> Result<()> {
        let command = Cli::command()
            .mut_subcommand("train-teacher", |c| {
                with_run_defaults(c, &RunOptions::TRAIN_TEACHER)
            })
            .mut_subcommand("distill", |c| with_run_defaults(c, &RunOptions::DISTILL));
        let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
        match cli.command {
            Command::Caption(a) => caption(a),
            Command::TrainTeacher(a) => train_teacher(a),
            Command::Distill(a) => distill(a),
            Command::Eval(a) => eval(a),
            Command::Data(DataCommand::Export { split, n, out }) => {
                amad::data::export::export(split, n, &out)?;
                println!("wrote {n} {} scenes to {}", split.name(), out.display());
                Ok(())
            }
            Command::Loss(a) => loss(a),
            Command::Bench(b) => match b {
                BenchCommand::Kernels { json, iters, only } => {
                    amad::bench::kernels(&gpu()?, iters, json, only.as_deref())
                }
                BenchCommand::Step { json, iters, batch } => {
                    amad::bench::step(&gpu()?, batch, iters, json)
                }
                BenchCommand::Distill {
                    teacher,
                    teacher_half_weights,
                    batch,
                    len,
                    iters,
                    json,
                    profile,
                } => {
                    let gpu = gpu()?;
                    let teacher = Captioner::load_as(
                        &gpu,
                        &teacher,
                        Precision::forward(teacher_half_weights),
                    )?;
                    amad::bench::distill(&gpu, &teacher, batch, len, iters, json, profile)
                }
                BenchCommand::Caption {
                    caption,
                    iters,
                    json,
                    profile,
                } => bench_caption(caption, iters, json, profile),
                BenchCommand::Profile { batch } => amad::bench::profile(&gpu()?, batch),
            },
        }
    }

    /// A path's file name, for output lines.
    fn file_name(path: &Path) -> String {
        path.file_name()
            .unwrap_or(path.as_os_str())
            .to_string_lossy()
            .into_owned()
    }

    /// An image file decoded, or an error that names it; an incomplete image is warned of.
    fn read_image(path: &Path) -> Result<amad::data::image::Pixels> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| Error::Invalid(format!("{shown}: {e}")))?;
        let pixels = amad::data::image::decode(&bytes, &shown)?;
        if let Some(w) = amad::data::image::warning(&bytes, &shown) {
            eprintln!("amad: warning: {w}");
        }
        Ok(pixels)
    }

    fn caption(a: CaptionArgs) -> Result<()> {
        let gpu = gpu()?;
        let captioner = Captioner::load_as(&gpu, &a.model, Precision::forward(a.half_weights))?;
        // The checkpoint's own generation settings, where the command line does not override them.
        let generation = captioner.generation.overridden(a.beam, a.max_tokens);
        // Images are captioned together, as many as make the rows that the one-token products
        // take (FEW_ROWS, beams counted): each token then reads the weights once for all.
        let together = (amad::ops::matmul::FEW_ROWS / generation.beams.max(1)).max(1);
        let mut failed = 0;
        for paths in a.images.chunks(together) {
            let (mut names, mut images) = (vec![], vec![]);
            for path in paths {
                match read_image(path) {
                    Ok(pixels) => {
                        names.push(file_name(path));
                        images.push(pixels);
                    }
                    Err(e) => {
                        eprintln!("amad: {e}");
                        failed += 1;
                    }
                }
            }
            if images.is_empty() {
                continue;
            }
            match pollster::block_on(captioner.captions(&gpu, &images, generation)) {
                Ok(texts) => {
                    for (name, text) in names.iter().zip(texts) {
                        println!("{name}\t{text}");
                    }
                }
                Err(e) => {
                    eprintln!("amad: {}: {e}", names.join(", "));
                    failed += names.len();
                }
            }
        }
        if failed > 0 {
            return Err(Error::Invalid(format!(
                "{failed} of {} images could not be captioned",
                a.images.len()
            )));
        }
        Ok(())
    }

    fn train_teacher(a: TrainTeacherArgs) -> Result<()> {
        use amad::model::{preprocessor, Config, Model};
        use amad::train::train_captioner;
        // The defaults are the bundled teacher's recipe (docs/bundled-models.md): the shape
        // loss's weight and its 2 × 2 sub-cells per patch are the settings that scored best.
        let opts = a.run.options(&RunOptions::TRAIN_TEACHER);
        if let Some(cells) = a.shape_cells.filter(|_| a.shape_loss == 0.0) {
            return Err(Error::Invalid(format!(
                "--shape-cells {cells} sets the shape loss's labels, but --shape-loss 0 turns that loss off; drop one of them"
            )));
        }
        let shape_loss = (a.shape_loss != 0.0).then_some(amad::train::ShapeTargets {
            weight: a.shape_loss,
            cells: a.shape_cells.unwrap_or(SHAPE_CELLS),
        });
        let gpu = gpu()?;
        let c = train_captioner(&gpu, &a.out, &opts, shape_loss, || {
            let tokenizer = amad::data::captions::tokenizer();
            let cfg = Config::teacher(tokenizer.len(), 16);
            Ok(Captioner {
                model: Model::new(&gpu, cfg, a.seed)?,
                tokenizer,
                preprocess: preprocessor::default_for(64, 8),
                generation: amad::model::generate::Generation::default(),
            })
        })?;
        print_validation(&gpu, &c, &amad::train::Source::Scenes)
    }

    /// Validates a freshly trained model on `source` (200 scenes, or the held-out images) and
    /// prints the scores.
    fn print_validation(gpu: &Gpu, c: &Captioner, source: &amad::train::Source) -> Result<()> {
        if let Some((_, shown)) = pollster::block_on(source.validate(gpu, c, 200))? {
            println!("{shown}");
        }
        Ok(())
    }

    fn distill(a: DistillArgs) -> Result<()> {
        use amad::distill::DistillConfig;
        use amad::model::{Config, Model, StudentShape};
        let opts = a.run.options(&RunOptions::DISTILL);
        let cfg = DistillConfig {
            alpha: a.alpha,
            beta: a.beta,
            gamma: a.gamma,
            temperature: a.temperature,
            ..DistillConfig::default()
        }
        .with_method(&a.method, a.tau, a.detach_weights)?;
        let gpu = gpu()?;
        let precision = Precision::forward(a.teacher_half_weights);
        let files = Captioner::read_files(&a.teacher)?;
        let teacher_key = amad::train::batch::teacher_key(&files, precision);
        let teacher =
            Captioner::from_file_map(&gpu, &files, &a.teacher.display().to_string(), precision)?;
        drop(files);
        let shape = StudentShape::default_for(&teacher.model.cfg).overridden(
            a.student_layers,
            a.student_width,
            a.student_heads,
        );
        shape.check()?;
        if a.init_from_teacher {
            // Before the teacher captions anything: a student that cannot start from it is refused.
            amad::distill::init::check(
                &teacher.model.cfg,
                &Config::student_of(&teacher.model.cfg, &shape),
            )?;
        }
        // Likewise a student checkpoint that is not of this teacher.
        let initial = match &a.student_init {
            Some(dir) => {
                let m = Model::load(&gpu, dir)?;
                amad::distill::init::check_student_of(&teacher.model.cfg, &m.cfg, dir)?;
                Some(m)
            }
            None => None,
        };
        let source = match &a.images {
            None => amad::train::Source::Scenes,
            Some(dir) => {
                let all = image_targets(&gpu, &teacher, &teacher_key, dir, &a.out)?;
                let (train, held_out) = all.split(a.val_fraction)?;
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
        let c =
            amad::train::distill_captioner(&gpu, &teacher, &a.out, &opts, &cfg, &source, || {
                let scfg = Config::student_of(&teacher.model.cfg, &shape);
                let model = if let Some(m) = initial {
                    m
                } else if a.init_from_teacher {
                    let (m, copied) = pollster::block_on(amad::distill::init::from_teacher(
                        &gpu,
                        &teacher.model,
                        scfg,
                        a.seed,
                    ))?;
                    eprintln!(
                        "{copied} of the student's {} tensors start from the teacher's",
                        m.layout.specs.len()
                    );
                    m
                } else {
                    Model::new(&gpu, scfg, a.seed)?
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
    /// `out`/targets.jsonl with the teacher's key (`teacher_key`): captions this teacher already
    /// made there (matched by the image's bytes) are reused, so a resumed or repeated run
    /// captions nothing twice. Unreadable files are reported and skipped. A run in `out` that
    /// another teacher's captions trained is not resumed with this one.
    fn image_targets(
        gpu: &Gpu,
        teacher: &Captioner,
        teacher_key: &str,
        dir: &Path,
        out: &Path,
    ) -> Result<amad::train::batch::ImageTargets> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| Error::Invalid(format!("--images {}: {e}", dir.display())))?
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
        // A line that does not parse is captioned again, never trusted; so is one without a
        // teacher's key (written before captions were kept per teacher).
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let other_teacher = lines
            .iter()
            .any(|v| v["teacher"].as_str().is_some_and(|k| k != teacher_key));
        if other_teacher && amad::train::resumes(out) {
            return Err(Error::Invalid(format!(
                "{} holds a run whose targets another teacher captioned (other files, or its \
                 weights at another precision; {} says so): resume it with that teacher, or give \
                 a new --out to distil from this one",
                out.display(),
                path.display()
            )));
        }
        let cached: std::collections::HashMap<String, String> = lines
            .iter()
            .filter(|v| v["teacher"].as_str() == Some(teacher_key))
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
            "the teacher captions {} files in {} ({reused} captions reused from {})…",
            files.len() - reused,
            dir.display(),
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
                    serde_json::json!({"file": t.names[i], "key": t.keys[i],
                        "teacher": teacher_key, "caption": t.captions[i]})
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

    fn bench_caption(a: CaptionArgs, iters: usize, json: bool, profile: bool) -> Result<()> {
        let images = a
            .images
            .iter()
            .map(|p| Ok((file_name(p), read_image(p)?)))
            .collect::<Result<Vec<_>>>()?;
        let gpu = gpu()?;
        let c = Captioner::load_as(&gpu, &a.model, Precision::forward(a.half_weights))?;
        let generation = c.generation.overridden(a.beam, a.max_tokens);
        if profile {
            return amad::bench::caption_profile(&gpu, &c, &images[0].1, generation);
        }
        amad::bench::caption(&gpu, &c, &images, generation, iters, json)
    }

    fn eval(a: EvalArgs) -> Result<()> {
        use amad::model::generate::Generation;
        let gpu = gpu()?;
        let c = Captioner::load(&gpu, &a.model)?;
        let generation = Generation {
            beams: a.beam,
            ..Generation::default()
        };
        let e = pollster::block_on(amad::train::evaluate(&gpu, &c, a.split, a.n, generation))?;
        let name = a.split.name();
        if a.json {
            println!(
                "{}",
                serde_json::json!({"model": a.model, "split": name, "n": e.n, "bleu4": e.bleu4, "cider_d": e.cider_d, "rouge_l": e.rouge_l, "truth": e.truth})
            );
        } else {
            println!(
                "{name} ({} scenes): BLEU-4 {:.4}  CIDEr-D {:.4}  ROUGE-L {:.4}  truth {:.4}",
                e.n, e.bleu4, e.cider_d, e.rouge_l, e.truth
            );
        }
        Ok(())
    }

    fn loss(a: LossArgs) -> Result<()> {
        let shown = a.input.display().to_string();
        let bytes = std::fs::read(&a.input).map_err(|e| Error::Invalid(format!("{shown}: {e}")))?;
        let gpu = gpu()?;
        let out = pollster::block_on(maps_file::loss_file(
            &gpu,
            &bytes,
            &shown,
            amad::ops::amad::Options {
                variant: a.variant,
                tau: a.tau,
                detach_weights: a.detach_weights,
            },
        ))?;
        std::fs::write(&a.output, out)
            .map_err(|e| Error::Invalid(format!("{}: {e}", a.output.display())))?;
        println!("wrote {}", a.output.display());
        Ok(())
    }
}
