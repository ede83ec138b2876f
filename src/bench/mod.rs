//! Benchmarks that print figures (`amad bench ...`). Never timed tests: these machines are noisy,
//! so comparisons are made side by side within one run.

use crate::ops::attention::{self, Seq};
use crate::ops::{matmul::matmul, softmax::Masks};
use crate::{Gpu, Result, Tensor};
use std::time::Instant;

struct Record {
    name: String,
    shape: String,
    ms: f64,
    gflops: Option<f64>,
}

impl Record {
    fn print(&self, gpu: &Gpu, json: bool) {
        if json {
            let gf = self
                .gflops
                .map_or("null".to_string(), |g| format!("{g:.3}"));
            println!(
                "{{\"name\":\"{}\",\"shape\":\"{}\",\"ms\":{:.4},\"gflops\":{gf},\"adapter\":\"{}\"}}",
                self.name,
                self.shape,
                self.ms,
                gpu.info.name.replace('"', "'")
            );
        } else {
            let gf = self
                .gflops
                .map_or(String::new(), |g| format!("{g:8.2} GFLOP/s"));
            println!(
                "{:<28} {:<26} {:>9.3} ms {gf}",
                self.name, self.shape, self.ms
            );
        }
    }
}

/// Seconds per repetition of `record`, `iters` repetitions in one submission after one warm-up
/// (which also builds the pipelines).
fn time(gpu: &Gpu, iters: usize, record: &dyn Fn(&mut crate::Step) -> Result<()>) -> Result<f64> {
    let run = |reps: usize| -> Result<f64> {
        let t = Instant::now();
        let mut step = gpu.step();
        for _ in 0..reps {
            record(&mut step)?;
        }
        step.submit()?;
        gpu.wait_idle()?;
        Ok(t.elapsed().as_secs_f64())
    };
    run(1)?;
    Ok(run(iters)? / iters as f64)
}

/// The matmul operand paths to time, each as (images, subgroup kernel, record-name suffix): the
/// device's own, and where that is images (CPU adapters, see `Gpu::image_operands`) also storage
/// buffers, and where it is the subgroup kernel (`Gpu::subgroup_matmul`) also the image kernel
/// without subgroups, side by side, so the figures show what each gains.
fn operand_paths(gpu: &Gpu) -> Vec<(bool, bool, &'static str)> {
    let mut paths = vec![(gpu.image_operands(), gpu.subgroup_matmul(), "")];
    if gpu.subgroup_matmul() {
        paths.push((true, false, "_images"));
    }
    if gpu.image_operands() {
        paths.push((false, false, "_buffers"));
    }
    paths
}

/// Times `record` once per operand path (see [`operand_paths`]), restoring the device's settings.
fn time_paths(
    gpu: &Gpu,
    iters: usize,
    record: &dyn Fn(&mut crate::Step) -> Result<()>,
) -> Result<Vec<(&'static str, f64)>> {
    let (images, subgroup) = (gpu.image_operands(), gpu.subgroup_matmul());
    let times = operand_paths(gpu)
        .into_iter()
        .map(|(i, s, suffix)| {
            gpu.set_image_operands(i);
            if i {
                gpu.set_subgroup_matmul(s);
            }
            Ok((suffix, time(gpu, iters, record)?))
        })
        .collect();
    gpu.set_image_operands(images);
    // Where images are on, `subgroup` is the switch itself (or the device has no subgroups, and
    // the switch does nothing); where they are off, the paths above left the switch alone.
    if images {
        gpu.set_subgroup_matmul(subgroup);
    }
    times
}

/// On a device that reads buffers (GPUs), times `record` with the other of the workgroup-memory
/// and vec4 matmuls than the device's own (see `Gpu::shared_matmul`), so both show side by side.
fn time_other_tiles(
    gpu: &Gpu,
    iters: usize,
    record: &dyn Fn(&mut crate::Step) -> Result<()>,
) -> Result<Option<(&'static str, f64)>> {
    if gpu.image_operands() {
        return Ok(None);
    }
    let shared = gpu.shared_matmul();
    gpu.set_shared_matmul(!shared);
    let other = time(gpu, iters, record);
    gpu.set_shared_matmul(shared);
    Ok(Some((if shared { "_vec4" } else { "_shared" }, other?)))
}

/// One record per timed path of the work `name` (`flops` of it), named with the path's suffix.
fn print_paths(
    gpu: &Gpu,
    json: bool,
    name: &str,
    shape: &str,
    times: Vec<(&str, f64)>,
    flops: f64,
) {
    for (suffix, s) in times {
        Record {
            name: format!("{name}{suffix}"),
            shape: shape.to_string(),
            ms: s * 1e3,
            gflops: Some(flops / s / 1e9),
        }
        .print(gpu, json);
    }
}

fn filled(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    Tensor::from_slice(gpu, shape, &data)
}

/// `amad bench kernels`: matmul GFLOP/s at 512³ and 2048³, at the teacher's shapes (batch 32 × 65 image
/// tokens × 128 wide), at a ViT-B/16 encoder's shapes (16 images × 197 tokens × 768 wide) and at a
/// full-size decoder's one-token shapes, and the attention core's forward + backward time. `only`
/// keeps the cases whose names contain it (a dev loop for one kernel).
pub fn kernels(gpu: &Gpu, iters: usize, json: bool, only: Option<&str>) -> Result<()> {
    let wanted = |name: &str| only.is_none_or(|o| name.contains(o));
    if !json {
        println!("adapter: {}", gpu.describe());
    }
    let tokens = 32 * 65;
    // (name, m, n, k, transpose A, transpose B): the square probe, then the teacher's linear
    // layers forward (X·W), and their backward (dX = dY·Wᵀ, dW = Xᵀ·dY).
    let cases: &[(&str, usize, usize, usize, bool, bool)] = &[
        ("matmul", 512, 512, 512, false, false),
        ("matmul_at", 512, 512, 512, true, false),
        ("matmul_bt", 512, 512, 512, false, true),
        // The size at which GPU matmuls are compared with cuBLAS.
        ("matmul_2048", 2048, 2048, 2048, false, false),
        ("teacher_qkv_fwd", tokens, 384, 128, false, false),
        ("teacher_mlp_up_fwd", tokens, 512, 128, false, false),
        ("teacher_mlp_down_fwd", tokens, 128, 512, false, false),
        ("teacher_mlp_up_dx", tokens, 128, 512, false, true),
        ("teacher_mlp_up_dw", 128, 512, tokens, true, false),
        // A full-size teacher's encoder at batch 16 (ViT-B/16: 197 tokens, 768 wide), its QKV
        // projection and its MLP's down projection, the largest share of a distillation step.
        ("vit_qkv_fwd", 16 * 197, 2304, 768, false, false),
        ("vit_mlp_down_fwd", 16 * 197, 768, 3072, false, false),
        // Generating one token of a GPT-2 (768 wide) caption: one row through Conv1D weights
        // [in, out], and half the tied LM head [vocab, in] (a binding of 128 MiB holds half of it);
        // each weight is read once per token.
        ("decode_qkv", 1, 2304, 768, false, false),
        ("decode_mlp_down", 1, 768, 3072, false, false),
        ("decode_lm_head_half", 1, 25129, 768, false, true),
    ];
    for &(name, m, n, k, ta, tb) in cases.iter().filter(|c| wanted(c.0)) {
        let a = filled(gpu, &if ta { [k, m] } else { [m, k] })?;
        let b = filled(gpu, &if tb { [n, k] } else { [k, n] })?;
        let record = |step: &mut crate::Step| matmul(step, &a, &b, ta, tb, None).map(drop);
        let mut times = time_paths(gpu, iters, &record)?;
        if m > 4 {
            times.extend(time_other_tiles(gpu, iters, &record)?);
        }
        if m <= 4 && gpu.image_operands() {
            // As in generation: B's image made once and kept (see `Gpu::hold_images`).
            let _held = gpu.hold_images(std::slice::from_ref(&b));
            times.push(("_held", time(gpu, iters, &record)?));
        }
        let shape = format!(
            "{m}x{n}x{k}{}{}",
            if ta { " Aᵀ" } else { "" },
            if tb { " Bᵀ" } else { "" }
        );
        let flops = 2.0 * (m * n * k) as f64;
        print_paths(gpu, json, name, &shape, times, flops);
    }
    if wanted("attention_fwd") {
        teacher_attention(gpu, iters, json)?;
    }
    if wanted("vit_attention_fwd") {
        vit_attention(gpu, iters, json)?;
    }
    if wanted("decode_cross_attention") {
        decode_cross_attention(gpu, iters, json)?;
    }
    Ok(())
}

/// The attention core at the teacher's encoder shape: B = 32, H = 8, T = 65, head width 16, with
/// Q, K and V side by side in one fused projection as the model has them; forward, and forward +
/// backward.
fn teacher_attention(gpu: &Gpu, iters: usize, json: bool) -> Result<()> {
    let (b, h, t, d) = (32, 8, 65, 16);
    let qkv = filled(gpu, &[b, t, 3 * h * d])?;
    let dout = filled(gpu, &[b, t, h * d])?;
    let flops_fwd = 2.0 * 2.0 * (b * h * t * t * d) as f64;
    let dims = attention::Dims::new(b, h, t, t, d);
    let (q, k, v) = (
        Seq::part(&qkv, 0, 3),
        Seq::part(&qkv, 1, 3),
        Seq::part(&qkv, 2, 3),
    );
    let fwd = time_paths(gpu, iters, &|step| {
        attention::attention(step, dims, q, k, v, Masks::default()).map(drop)
    })?;
    let fwd_bwd = time_paths(gpu, iters, &|step| {
        let (o, p) = attention::attention(step, dims, q, k, v, Masks::default())?;
        let dqkv = step.empty(&[b, t, 3 * h * d])?;
        let grads = attention::Grads {
            dq: Seq::part(&dqkv, 0, 3),
            dk: Seq::part(&dqkv, 1, 3),
            dv: Seq::part(&dqkv, 2, 3),
            dprobs: None,
        };
        let saved = attention::Saved { out: &o, probs: &p };
        attention::attention_bwd(step, dims, q, k, v, saved, &dout, grads)
    })?;
    let shape = format!("B{b} H{h} T{t} D{d}");
    for (name, times, flops) in [
        ("attention_fwd", fwd, flops_fwd),
        ("attention_fwd_bwd", fwd_bwd, 3.0 * flops_fwd),
    ] {
        print_paths(gpu, json, name, &shape, times, flops);
    }
    Ok(())
}

/// The attention core of a ViT-B/16 encoder layer (12 heads of 64 over 197 tokens), for 4 images,
/// forward only, as a teacher's forward runs it.
fn vit_attention(gpu: &Gpu, iters: usize, json: bool) -> Result<()> {
    let (b, h, t, d) = (4, 12, 197, 64);
    let qkv = filled(gpu, &[b, t, 3 * h * d])?;
    let dims = attention::Dims::new(b, h, t, t, d);
    let (q, k, v) = (
        Seq::part(&qkv, 0, 3),
        Seq::part(&qkv, 1, 3),
        Seq::part(&qkv, 2, 3),
    );
    let record = |step: &mut crate::Step| {
        attention::attention(step, dims, q, k, v, Masks::default()).map(drop)
    };
    let times = time_paths(gpu, iters, &record)?;
    let flops = 4.0 * (b * h * t * t * d) as f64;
    print_paths(
        gpu,
        json,
        "vit_attention_fwd",
        &format!("B{b} H{h} T{t} D{d}"),
        times,
        flops,
    );
    Ok(())
}

/// One token of a GPT-2 (12 heads of 64) decoding: its query against the 197 image tokens' keys
/// and values (cross-attention), as generation lays them out.
fn decode_cross_attention(gpu: &Gpu, iters: usize, json: bool) -> Result<()> {
    let (h, t, d) = (12, 197, 64);
    let q = filled(gpu, &[1, 1, 3 * h * d])?;
    let kv = filled(gpu, &[1, t, 2 * h * d])?;
    let dims = attention::Dims::new(1, h, 1, t, d);
    let record = |step: &mut crate::Step| {
        let (q, k, v) = (
            Seq::part(&q, 0, 3),
            Seq::part(&kv, 0, 2),
            Seq::part(&kv, 1, 2),
        );
        attention::attention(step, dims, q, k, v, Masks::default()).map(drop)
    };
    let times = time_paths(gpu, iters, &record)?;
    let flops = 4.0 * (h * t * d) as f64;
    print_paths(
        gpu,
        json,
        "decode_cross_attention",
        &format!("B1 H{h} 1x{t} D{d}"),
        times,
        flops,
    );
    Ok(())
}

/// What the step benchmarks run: the default teacher and student, a random batch, their
/// optimisers and the default distillation settings.
struct StepSetup {
    teacher: crate::model::Model,
    student: crate::model::Model,
    data: crate::distill::Batch,
    topt: crate::model::Optimizer,
    sopt: crate::model::Optimizer,
    cfg: crate::distill::DistillConfig,
}

impl StepSetup {
    fn new(gpu: &Gpu, batch: usize) -> Result<StepSetup> {
        use crate::model::{Config, Model, Optimizer};
        use crate::ops::optim::AdamW;
        let teacher = Model::new(gpu, Config::teacher(STEP_VOCAB, STEP_LEN), 1)?;
        let student = Model::new(gpu, Config::student(STEP_VOCAB, STEP_LEN), 2)?;
        let data = step_batch(gpu, &teacher.cfg, batch)?;
        let topt = Optimizer::new(gpu, &teacher.layout, AdamW::default(), 1.0)?;
        let sopt = Optimizer::new(gpu, &student.layout, AdamW::default(), 1.0)?;
        Ok(StepSetup {
            teacher,
            student,
            data,
            topt,
            sopt,
            cfg: crate::distill::DistillConfig::default(),
        })
    }

    /// Records one teacher training step: forward with attention maps, cross-entropy, backward,
    /// AdamW.
    fn teacher_step(&mut self, st: &mut crate::Step) -> Result<()> {
        let d = &self.data;
        self.teacher
            .train_step(
                st,
                &mut self.topt,
                &d.teacher_patches,
                &d.ids,
                &d.labels,
                |_, _| Ok(None),
            )
            .map(drop)
    }

    /// Records one distillation step: teacher forward, student forward and backward, CE + KD +
    /// AMAD-KL, AdamW.
    fn distill_step(&mut self, st: &mut crate::Step) -> Result<()> {
        crate::distill::distill_step(
            st,
            &self.teacher,
            &self.student,
            &mut self.sopt,
            &self.data,
            &self.cfg,
        )
        .map(drop)
    }
}

/// The steps `bench step` and `bench profile` measure, by name.
type Recorder = fn(&mut StepSetup, &mut crate::Step) -> Result<()>;
const STEPS: [(&str, Recorder); 2] = [
    ("teacher_train_step", StepSetup::teacher_step),
    ("distill_step_amad_kl", StepSetup::distill_step),
];

/// `amad bench profile`: where one teacher training step and one distillation step spend their
/// time, kernel by kernel (see [`Gpu::profile`]: each dispatch runs on its own, so the totals
/// exceed `bench step`'s times by the submissions' overhead).
pub fn profile(gpu: &Gpu, batch: usize) -> Result<()> {
    println!("adapter: {}", gpu.describe());
    let mut setup = StepSetup::new(gpu, batch)?;
    for (name, record) in STEPS {
        profile_step(gpu, &format!("{name}, batch {batch}"), &mut || {
            let mut st = gpu.step();
            record(&mut setup, &mut st)?;
            st.submit()?;
            gpu.wait_idle()
        })?;
    }
    Ok(())
}

/// Prints where one step (`once` records, submits and waits for it) spends its time, kernel by
/// kernel, beside the same step as one submission.
fn profile_step(gpu: &Gpu, name: &str, once: &mut dyn FnMut() -> Result<()>) -> Result<()> {
    // A first step builds the pipelines, so the profiled one times only the kernels.
    once()?;
    let p = gpu.profile(&mut *once)?;
    let total: f64 = p.values().map(|v| v.1).sum();
    let dispatches = p.values().map(|v| v.0).sum::<u64>();
    // The same step as one submission (the best of three): what profiling adds per dispatch is
    // the part of each row that is not the kernel's.
    let mut whole = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        once()?;
        whole = whole.min(t.elapsed().as_secs_f64());
    }
    println!(
        "\n{name}: {:.1} ms in {dispatches} dispatches, each on its own \
         ({:.1} ms as one submission: about {:.2} ms of each dispatch's time is its own \
         submission and wait)",
        total * 1e3,
        whole * 1e3,
        ((total - whole) / dispatches.max(1) as f64).max(0.0) * 1e3
    );
    let mut rows: Vec<_> = p.into_iter().collect();
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    for (entry, (calls, secs)) in rows {
        println!(
            "  {entry:<28} {calls:>5} calls {:>9.2} ms {:>5.1}%",
            secs * 1e3,
            100.0 * secs / total
        );
    }
    Ok(())
}

/// Vocabulary and caption length of the step benchmark: the scale of the generated captions.
pub const STEP_VOCAB: usize = 64;
pub const STEP_LEN: usize = 16;

/// A random batch for the step benchmark: patches, decoder inputs, labels (no padding).
fn step_batch(
    gpu: &Gpu,
    cfg: &crate::model::Config,
    batch: usize,
) -> Result<crate::distill::Batch> {
    let mut rng = crate::rng::Rng::new(1);
    let e = &cfg.encoder;
    let patches: Vec<f32> = (0..batch * e.patches() * e.patch_dim())
        .map(|_| rng.uniform() as f32)
        .collect();
    let ids: Vec<u32> = (0..batch * STEP_LEN)
        .map(|_| rng.below(STEP_VOCAB) as u32)
        .collect();
    let patches = Tensor::from_slice(gpu, &[batch, e.patches(), e.patch_dim()], &patches)?;
    Ok(crate::distill::Batch {
        teacher_patches: patches.clone(),
        student_patches: patches,
        ids: Tensor::from_u32(gpu, &[batch, STEP_LEN], &ids)?,
        labels: Tensor::from_u32(gpu, &[batch * STEP_LEN], &ids)?,
        valid: vec![true; batch * STEP_LEN],
    })
}

/// `amad bench step`: the time of one teacher training step and one distillation step (teacher
/// forward + student forward and backward + AMAD + AdamW) at the default configs, batch `batch`.
pub fn step(gpu: &Gpu, batch: usize, iters: usize, json: bool) -> Result<()> {
    if !json {
        println!("adapter: {}", gpu.describe());
    }
    // The steps mutate the optimisers, so time() (which takes a Fn) gets the setup through a
    // RefCell.
    let setup = std::cell::RefCell::new(StepSetup::new(gpu, batch)?);
    let shape = format!(
        "batch {batch}, {} + {} tokens",
        setup.borrow().teacher.cfg.encoder.tokens(),
        STEP_LEN
    );
    for (name, record) in STEPS {
        let times = time_paths(gpu, iters, &|st| record(&mut setup.borrow_mut(), st))?;
        for (suffix, s) in times {
            Record {
                name: format!("{name}{suffix}"),
                shape: shape.clone(),
                ms: s * 1e3,
                gflops: None,
            }
            .print(gpu, json);
        }
    }
    Ok(())
}

/// `amad bench distill`: a distillation step from `teacher` (a Hub captioner's directory, at
/// full size) into its default student (`StudentShape::default_for`) at batch `batch` with
/// captions of `len` positions: the teacher's forward alone (keeping its logits and paired maps,
/// as the step does) and the whole step (teacher forward, student forward and backward, CE +
/// T²·KD + AMAD-KL over all three attention kinds, AdamW); best of `iters` after a warm-up.
pub fn distill(
    gpu: &Gpu,
    teacher: &crate::model::captioner::Captioner,
    batch: usize,
    len: usize,
    iters: usize,
    json: bool,
    profile: bool,
) -> Result<()> {
    use crate::model::{Config, KeepMaps, Model, Optimizer, StudentShape};
    let tcfg = &teacher.model.cfg;
    let shape = StudentShape::default_for(tcfg);
    let student = Model::new(gpu, Config::student_of(tcfg, &shape), 2)?;
    let cfg = crate::distill::DistillConfig::default();
    let need = crate::distill::memory::check(
        (tcfg, teacher.model.precision()),
        &student.cfg,
        &cfg,
        batch,
        len,
        gpu.max_binding(),
        gpu.available_memory(),
    )?;
    let mut rng = crate::rng::Rng::new(1);
    let e = &tcfg.encoder;
    let patches: Vec<f32> = (0..batch * e.patches() * e.patch_dim())
        .map(|_| rng.uniform() as f32 * 2.0 - 1.0)
        .collect();
    let vocab = tcfg.decoder.vocab_size;
    let ids: Vec<u32> = (0..batch * len).map(|_| rng.below(vocab) as u32).collect();
    let patches = Tensor::from_slice(gpu, &[batch, e.patches(), e.patch_dim()], &patches)?;
    let data = crate::distill::Batch {
        teacher_patches: patches.clone(),
        student_patches: patches,
        ids: Tensor::from_u32(gpu, &[batch, len], &ids)?,
        labels: Tensor::from_u32(gpu, &[batch * len], &ids)?,
        valid: vec![true; batch * len],
    };
    let opt = std::cell::RefCell::new(Optimizer::new(
        gpu,
        &student.layout,
        crate::ops::optim::AdamW::default(),
        1.0,
    )?);
    // The teacher's forward as the step records it: the paired layers' maps kept.
    let pairs = |t, s| crate::distill::layer_pairs(t, s, cfg.layer_map);
    let mut keep = KeepMaps {
        encoder: vec![false; e.num_hidden_layers],
        decoder_self: vec![false; tcfg.decoder.n_layer],
        cross: vec![false; tcfg.decoder.n_layer],
    };
    for (_, t) in pairs(e.num_hidden_layers, student.cfg.encoder.num_hidden_layers) {
        keep.encoder[t] = true;
    }
    for (_, t) in pairs(tcfg.decoder.n_layer, student.cfg.decoder.n_layer) {
        keep.decoder_self[t] = true;
        keep.cross[t] = true;
    }
    if !json {
        println!("adapter: {}", gpu.describe());
        println!(
            "teacher {:.1} M parameters, student {:.1} M ({:?} encoder, {:?} decoder: layers, width, heads); \
             estimated {:.0} MB per step",
            teacher.model.layout.param_count() as f64 / 1e6,
            student.layout.param_count() as f64 / 1e6,
            shape.encoder,
            shape.decoder,
            need.total() as f64 / 1e6
        );
    }
    let best = |record: &dyn Fn(&mut crate::Step) -> Result<()>| -> Result<f64> {
        let once = || -> Result<f64> {
            let t = Instant::now();
            let mut st = gpu.step();
            record(&mut st)?;
            st.submit()?;
            gpu.wait_idle()?;
            Ok(t.elapsed().as_secs_f64())
        };
        once()?;
        (0..iters.max(1)).try_fold(f64::INFINITY, |b, _| Ok(b.min(once()?)))
    };
    let step = |st: &mut crate::Step| {
        crate::distill::distill_step(
            st,
            &teacher.model,
            &student,
            &mut opt.borrow_mut(),
            &data,
            &cfg,
        )
        .map(drop)
    };
    if profile {
        return profile_step(
            gpu,
            &format!("hub_distill_step_amad_kl, batch {batch}"),
            &mut || {
                let mut st = gpu.step();
                step(&mut st)?;
                st.submit()?;
                gpu.wait_idle()
            },
        );
    }
    let forward = best(&|st| {
        teacher
            .model
            .forward_maps(st, &data.teacher_patches, &data.ids, &keep)
            .map(drop)
    })?;
    let step = best(&step)?;
    let shape = format!("batch {batch}, {} + {len} tokens", e.tokens());
    for (name, secs) in [
        ("hub_teacher_forward", forward),
        ("hub_distill_step_amad_kl", step),
    ] {
        Record {
            name: name.into(),
            shape: shape.clone(),
            ms: secs * 1e3,
            gflops: None,
        }
        .print(gpu, json);
    }
    let made = gpu.stats();
    if json {
        println!(
            "{}",
            serde_json::json!({"device_tensor_bytes": made.tensor_bytes,
                "device_image_bytes": made.image_bytes, "estimated_bytes": need.total()})
        );
    } else {
        println!(
            "device memory: {:.0} MB of tensor buffers, {:.0} MB of images (estimated {:.0} MB)",
            made.tensor_bytes as f64 / 1e6,
            made.image_bytes as f64 / 1e6,
            need.total() as f64 / 1e6
        );
    }
    match (peak_resident(), json) {
        (Some(peak), false) => println!("peak resident memory: {:.0} MB", peak as f64 / 1e6),
        (Some(peak), true) => println!("{}", serde_json::json!({"peak_resident_bytes": peak})),
        (None, _) => {}
    }
    Ok(())
}

/// The process's peak resident memory in bytes (Linux: VmHWM), where the system reports it. On a
/// CPU adapter (lavapipe) the device's buffers live here too.
fn peak_resident() -> Option<u64> {
    crate::gpu::proc_bytes("/proc/self/status", "VmHWM:")
}

/// `amad bench caption --profile`: one image's caption (encoder and every decoding step) kernel by
/// kernel.
pub fn caption_profile(
    gpu: &Gpu,
    c: &crate::model::captioner::Captioner,
    px: &crate::data::image::Pixels,
    generation: crate::model::generate::Generation,
) -> Result<()> {
    profile_step(
        gpu,
        &format!("caption, {} beam(s)", generation.beams),
        &mut || {
            let patches = c.patches(gpu, px)?;
            pollster::block_on(c.model.generate(gpu, &patches, generation)).map(drop)
        },
    )
}

/// `amad bench caption`: per image, the encoder's time (preprocessing, ViT, cross-attention keys
/// and values are in the generation), the whole caption's time and the decoder's time per new
/// token ((whole − encoder) / tokens); the best of `iters` runs per image after a warm-up, so
/// that the figures are the model's and not the pipelines' first builds.
pub fn caption(
    gpu: &Gpu,
    c: &crate::model::captioner::Captioner,
    images: &[(String, crate::data::image::Pixels)],
    generation: crate::model::generate::Generation,
    iters: usize,
    json: bool,
) -> Result<()> {
    let weights = c.model.weights.device_bytes();
    if !json {
        println!("adapter: {}", gpu.describe());
        println!(
            "model: {:.1} M parameters ({:.0} MB of weights on the device), {} beam(s), at most {} new tokens",
            c.model.layout.param_count() as f64 / 1e6,
            weights as f64 / 1e6,
            generation.beams,
            generation.max_new_tokens
        );
    }
    let encode = |px| -> Result<f64> {
        let t = Instant::now();
        let patches = c.patches(gpu, px)?;
        let mut step = gpu.step();
        c.model.encode(&mut step, &patches)?;
        step.submit()?;
        gpu.wait_idle()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let whole = |px| -> Result<(f64, usize)> {
        let t = Instant::now();
        let patches = c.patches(gpu, px)?;
        let ids = pollster::block_on(c.model.generate(gpu, &patches, generation))?;
        Ok((t.elapsed().as_secs_f64(), ids[0].len()))
    };
    for (name, px) in images {
        encode(px)?;
        whole(px)?;
        let mut enc = f64::INFINITY;
        let mut all = (f64::INFINITY, 0);
        for _ in 0..iters {
            enc = enc.min(encode(px)?);
            let w = whole(px)?;
            if w.0 < all.0 {
                all = w;
            }
        }
        // Every token but the start runs the decoder once (the last may be <eos>, not kept).
        let steps = (all.1 + 1).min(generation.max_new_tokens).max(1);
        let per_token = (all.0 - enc).max(0.0) / steps as f64;
        if json {
            println!(
                "{}",
                serde_json::json!({"image": name, "encoder_ms": enc * 1e3, "total_ms": all.0 * 1e3,
                    "decoder_ms_per_token": per_token * 1e3, "tokens": all.1, "beams": generation.beams,
                    "adapter": gpu.info.name})
            );
        } else {
            println!(
                "{name:<24} encoder {:>8.1} ms   decoder {:>7.1} ms/token   total {:>8.1} ms   ({} tokens)",
                enc * 1e3,
                per_token * 1e3,
                all.0 * 1e3,
                all.1
            );
        }
    }
    match (peak_resident(), json) {
        (Some(peak), false) => println!("peak resident memory: {:.0} MB", peak as f64 / 1e6),
        (Some(peak), true) => println!("{}", serde_json::json!({"peak_resident_bytes": peak})),
        (None, _) => {}
    }
    Ok(())
}
