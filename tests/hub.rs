//! Checkpoints as the Hugging Face Hub holds them: a tiny random VisionEncoderDecoder of
//! nlpconnect/vit-gpt2-image-captioning's kind with GPT-2's real vocabulary
//! (tests/fixtures/hub_tiny, made by tests/fixtures/make_hub_tiny.py), loaded from each weight
//! format and captioning photos as transformers does; and hostile files for every parser.

mod common;
use amad::model::captioner::Captioner;
use amad::model::formats::{self, zip, Dtype};
use amad::model::generate::Generation;
use amad::model::Precision;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/hub_tiny_golden.json"
);

/// A copy of the tiny Hub checkpoint without the files in `drop`.
fn copy_without(tag: &str, drop: &[&str]) -> PathBuf {
    let d = temp_dir(tag);
    for f in std::fs::read_dir(HUB_TINY).unwrap() {
        let f = f.unwrap();
        let name = f.file_name().into_string().unwrap();
        if !drop.contains(&name.as_str()) {
            std::fs::copy(f.path(), d.join(&name)).unwrap();
        }
    }
    d
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(GOLDEN).unwrap()).unwrap()
}

/// transformers' sequence without its start token, up to (not including) the first <eos>.
fn generated(seq: &Value) -> Vec<u32> {
    seq.as_array().unwrap()[1..]
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .take_while(|&t| t != EOT)
        .collect()
}

fn caption_ids(c: &Captioner, photo: &str, generation: Generation) -> Vec<u32> {
    let patches = photo_patches(c, gpu(), photo);
    pollster::block_on(c.model.generate(gpu(), &patches, generation))
        .unwrap()
        .remove(0)
}

/// Photos captioned together (`Captioner::captions`, as `amad caption` takes its images) get the
/// captions each gets alone: greedy for three photos, and 2 beams each for two (4 rows).
#[test]
fn photos_captioned_together_get_their_captions_alone() {
    let c = Captioner::load(gpu(), Path::new(HUB_TINY)).unwrap();
    let photos: Vec<_> = ["astronaut", "coffee", "chelsea"].map(photo_pixels).into();
    for (beams, n) in [(1, 3), (2, 2)] {
        let g = Generation {
            beams,
            ..Generation::default()
        };
        let alone: Vec<String> = photos[..n]
            .iter()
            .map(|p| pollster::block_on(c.caption(gpu(), p, g)).unwrap())
            .collect();
        assert_ne!(
            alone[0], alone[1],
            "the photos must caption apart for the test to tell"
        );
        let together = pollster::block_on(c.captions(gpu(), &photos[..n], g)).unwrap();
        assert_eq!(together, alone, "{beams} beam(s)");
    }
}

/// Greedy captions of the three photos: the same tokens and text as transformers' generate.
fn assert_greedy_as_transformers(c: &Captioner) {
    let g = golden();
    for photo in ["astronaut", "coffee", "chelsea"] {
        let ids = caption_ids(c, photo, Generation::default());
        assert_eq!(
            ids,
            generated(&g[photo]["greedy"]),
            "{photo}: greedy tokens"
        );
        assert_eq!(
            c.tokenizer.decode(&ids),
            g[photo]["greedy_text"].as_str().unwrap(),
            "{photo}: caption"
        );
    }
}

#[test]
fn the_hub_layout_with_safetensors_captions_as_transformers() {
    let c = Captioner::load(gpu(), Path::new(HUB_TINY)).unwrap();
    assert_eq!(c.model.cfg.decoder.vocab_size, 50257);
    assert_eq!(c.model.cfg.special_ids(), (EOT, EOT, EOT));
    // No generation_config.json and no generation fields in config.json: transformers' defaults.
    assert_eq!(
        c.generation,
        Generation {
            max_new_tokens: 19,
            ..Generation::default()
        }
    );
    assert_greedy_as_transformers(&c);
}

/// Config fields on the same weights, each checked against transformers' greedy tokens
/// (tests/fixtures/make_hub_tiny_variants.py): GPT-2's scale_attn_by_inverse_layer_idx (scores
/// further divided by the layer's index + 1) and ReLU in both MLPs. Each changes at least one of
/// the three captions, so each is seen to act.
#[test]
fn config_variants_caption_as_transformers() {
    let gold: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/hub_tiny_variants_golden.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let base = golden();
    for (variant, g) in gold.as_object().unwrap() {
        let dir = copy_without(variant, &[]);
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        for (part, fields) in g["config"].as_object().unwrap() {
            for (k, v) in fields.as_object().unwrap() {
                config[part][k] = v.clone();
            }
        }
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let c = Captioner::load(gpu(), &dir).unwrap();
        let mut differ = 0;
        for photo in ["astronaut", "coffee", "chelsea"] {
            let want = generated(&g[photo]["greedy"]);
            differ += (want != generated(&base[photo]["greedy"])) as usize;
            let got = caption_ids(&c, photo, Generation::default());
            assert_eq!(got, want, "{variant} {photo}");
        }
        assert!(differ > 0, "{variant} changes no caption");
        std::fs::remove_dir_all(dir).ok();
    }
}

/// Beam search, 4 beams, max_length 16: transformers' algorithm token for token.
#[test]
fn four_beams_give_the_tokens_transformers_gives() {
    let c = Captioner::load(gpu(), Path::new(HUB_TINY)).unwrap();
    let g = golden();
    let four = Generation {
        beams: 4,
        ..Generation::default()
    };
    for photo in ["astronaut", "coffee", "chelsea"] {
        let ids = caption_ids(&c, photo, four);
        assert_eq!(
            ids,
            generated(&g[photo]["beams4"]),
            "{photo}: 4-beam tokens"
        );
        assert_eq!(
            c.tokenizer.decode(&ids),
            g[photo]["beams4_text"].as_str().unwrap()
        );
    }
}

#[test]
fn pytorch_model_bin_loads_the_same_weights_as_safetensors() {
    let from_st = Captioner::load(gpu(), Path::new(HUB_TINY)).unwrap();
    let dir = copy_without("bin", &["model.safetensors"]);
    let from_bin = Captioner::load(gpu(), &dir).unwrap();
    for (a, b) in from_st
        .model
        .weights
        .blocks
        .iter()
        .zip(&from_bin.model.weights.blocks)
    {
        let (a, b) = (
            pollster::block_on(a.read(gpu())).unwrap(),
            pollster::block_on(b.read(gpu())).unwrap(),
        );
        assert!(a == b, "a block differs between the two formats");
    }
    assert_greedy_as_transformers(&from_bin);
    std::fs::remove_dir_all(dir).ok();
}

/// Sharded safetensors in half and bfloat16 precision: every tensor widens exactly.
#[test]
fn sharded_half_precision_safetensors_load_as_their_f32_values() {
    let bytes = std::fs::read(format!("{HUB_TINY}/model.safetensors")).unwrap();
    let all = formats::safetensors(&bytes, "model.safetensors").unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    for (dtype, tag) in [
        (safetensors::Dtype::F16, "f16"),
        (safetensors::Dtype::BF16, "bf16"),
    ] {
        let dir = copy_without(tag, &["model.safetensors"]);
        let mut index = serde_json::Map::new();
        let mut widened = std::collections::HashMap::new();
        for (s, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
            let shard = format!("model-0000{}-of-00002.safetensors", s + 1);
            let mut data = vec![];
            for name in part {
                let v = all[*name].to_f32(name, "").unwrap();
                let halves: Vec<u16> = v
                    .iter()
                    .map(|&x| match dtype {
                        safetensors::Dtype::F16 => half_bits(x),
                        _ => (x.to_bits() >> 16) as u16, // truncation is a valid bf16
                    })
                    .collect();
                let raw: Vec<u8> = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
                data.push(((*name).clone(), all[*name].shape.clone(), raw));
                index.insert((*name).clone(), Value::String(shard.clone()));
            }
            let views: Vec<(String, safetensors::tensor::TensorView)> = data
                .iter()
                .map(|(n, s, r)| {
                    (
                        n.clone(),
                        safetensors::tensor::TensorView::new(dtype, s.clone(), r).unwrap(),
                    )
                })
                .collect();
            std::fs::write(
                dir.join(&shard),
                safetensors::serialize(views, None).unwrap(),
            )
            .unwrap();
            for (n, s, r) in &data {
                let t = formats::RawTensor {
                    dtype: if tag == "f16" {
                        Dtype::F16
                    } else {
                        Dtype::BF16
                    },
                    shape: s.clone(),
                    data: std::borrow::Cow::Borrowed(r),
                };
                widened.insert(n.clone(), t.to_f32(n, "").unwrap());
            }
        }
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            serde_json::json!({"metadata": {}, "weight_map": index}).to_string(),
        )
        .unwrap();
        let c = Captioner::load(gpu(), &dir).unwrap();
        let wte = &c.model.weights.tensors[c.model.layout.wte];
        let got = pollster::block_on(wte.read(gpu())).unwrap();
        assert_eq!(got, widened["decoder.transformer.wte.weight"], "{tag}");
        // A shard the index names but that is gone: named in the error.
        std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
        let err = Captioner::load(gpu(), &dir).err().unwrap().to_string();
        assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }
}

/// f32 → f16 bits, rounding to nearest even (no overflow: these weights are far below 65504).
fn half_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    assert!(exp < 31, "{x} overflows f16");
    if exp < 1 {
        // Subnormal (or zero): a multiple of 2^-24, exact in f32 arithmetic.
        return sign | (x.abs() * 16_777_216.0).round_ties_even() as u16;
    }
    let mant = b & 0x7f_ffff;
    let mut h = ((exp as u32) << 10) | (mant >> 13);
    let rest = mant & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
        h += 1;
    }
    sign | h as u16
}

#[test]
fn vocab_json_and_merges_txt_stand_in_for_tokenizer_json() {
    let dir = copy_without("vocab", &["tokenizer.json"]);
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{HUB_TINY}/tokenizer.json")).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("vocab.json"), v["model"]["vocab"].to_string()).unwrap();
    let merges = merges_lines(&v);
    std::fs::write(
        dir.join("merges.txt"),
        format!("#version: 0.2\n{}\n", merges.join("\n")),
    )
    .unwrap();
    std::fs::write(
        dir.join("special_tokens_map.json"),
        r#"{"bos_token": "<|endoftext|>", "eos_token": {"content": "<|endoftext|>"}, "unk_token": "<|endoftext|>"}"#,
    )
    .unwrap();
    let c = Captioner::load(gpu(), &dir).unwrap();
    assert_greedy_as_transformers(&c);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn amad_caption_reads_a_hub_directory() {
    let dir = copy_without("cli", &["model.safetensors"]);
    let photos: Vec<String> = ["astronaut", "coffee"]
        .iter()
        .map(|p| format!("{PHOTOS}/{p}.png"))
        .collect();
    let out = amad_cli(
        // The goldens' max_length 16; without it the checkpoint's default (transformers' 20) holds.
        [
            "caption",
            "--model",
            dir.to_str().unwrap(),
            "--max-tokens",
            "15",
        ]
        .into_iter()
        .map(String::from)
        .chain(photos),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g = golden();
    for p in ["astronaut", "coffee"] {
        let want = g[p]["greedy_text"].as_str().unwrap();
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(&format!("{p}.png")) && l.ends_with(want)),
            "{p}: {want:?} not in\n{stdout}"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

// ---- Hostile files ----

/// A zip archive of stored entries, as torch.save writes one.
fn zip_stored(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = vec![];
    let mut central = vec![];
    for (name, data) in entries {
        let at = out.len() as u32;
        let head = |sig: u32, out: &mut Vec<u8>| {
            out.extend(sig.to_le_bytes());
            out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // versions, flags, method 0, time, date, crc
            out.extend((data.len() as u32).to_le_bytes());
            out.extend((data.len() as u32).to_le_bytes());
            out.extend((name.len() as u16).to_le_bytes());
            out.extend(0u16.to_le_bytes());
        };
        head(0x0403_4b50, &mut out);
        out.extend(name.as_bytes());
        out.extend(*data);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend([20, 0]);
        let mut h = vec![];
        head(0, &mut h);
        central.extend(&h[4..]);
        central.extend([0u8; 10]); // comment length, disk, internal and external attributes
        central.extend(at.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let dir_at = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0, 0, 0, 0]);
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(dir_at.to_le_bytes());
    out.extend([0, 0]);
    out
}

/// A state dict pickle of one float tensor `w` of `shape` over storage "0" of `numel` elements.
fn one_tensor_pickle(numel: u8, shape: &[u8]) -> Vec<u8> {
    let mut p = b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK".to_vec();
    p.push(numel);
    p.extend(b"tQK\x00(");
    for &d in shape {
        p.extend([b'K', d]);
    }
    p.extend(b"t(");
    let mut stride = 1u8;
    let mut strides = vec![];
    for &d in shape.iter().rev() {
        strides.push(stride);
        stride *= d;
    }
    for s in strides.iter().rev() {
        p.extend([b'K', *s]);
    }
    p.extend(b"t\x89ccollections\nOrderedDict\n)RtRu.");
    p
}

#[test]
fn a_restricted_unpickler_reads_a_hand_made_state_dict() {
    let floats: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let bin = zip_stored(&[
        ("archive/data.pkl", &one_tensor_pickle(6, &[2, 3])),
        ("archive/data/0", &floats),
    ]);
    let t = formats::torch_bin(&bin, "x.bin").unwrap();
    assert_eq!(t["w"].shape, [2, 3]);
    assert_eq!(
        t["w"].to_f32("w", "").unwrap(),
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    );
}

#[test]
fn hostile_pickles_and_archives_are_refused_with_a_message() {
    let floats: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let check = |bin: &[u8], needle: &str| {
        let err = formats::torch_bin(bin, "x.bin").unwrap_err().to_string();
        assert!(err.contains(needle), "wanted {needle:?} in: {err}");
        assert!(err.starts_with("x.bin: "), "{err}");
    };
    // A global a state dict never uses: refused by name, never imported or run.
    let evil = b"\x80\x02cos\nsystem\nX\x0c\x00\x00\x00touch /tmp/xR.";
    check(
        &zip_stored(&[("a/data.pkl", evil)]),
        "refused: the pickle names the global os.system",
    );
    let evil = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x8c\x04eval\x93.";
    check(&zip_stored(&[("a/data.pkl", evil)]), "builtins.eval");
    // Storage that holds fewer bytes than the pickle claims.
    check(
        &zip_stored(&[
            ("a/data.pkl", &one_tensor_pickle(6, &[2, 3])),
            ("a/data/0", &floats[..12]),
        ]),
        "claims 6 elements but holds 12 bytes",
    );
    // A view past its storage's end.
    check(
        &zip_stored(&[
            ("a/data.pkl", &one_tensor_pickle(4, &[2, 3])),
            ("a/data/0", &floats),
        ]),
        "reaches element 5 of a storage of 4",
    );
    check(
        &zip_stored(&[("a/data.pkl", &one_tensor_pickle(6, &[2, 3]))]),
        "storage 0 is not in the archive",
    );
    // A pickle cut short, and unknown opcodes.
    let p = one_tensor_pickle(6, &[2, 3]);
    check(
        &zip_stored(&[("a/data.pkl", &p[..p.len() / 2]), ("a/data/0", &floats)]),
        "ends early",
    );
    check(
        &zip_stored(&[("a/data.pkl", b"\x80\x02\xff.")]),
        "opcode 0xff",
    );
    check(
        &zip_stored(&[("a/data.pkl", b"\x80\x02X\xff\xff\xff\x7fab.")]),
        "longer than the file",
    );
    check(&zip_stored(&[("a/other", b"x")]), "no data.pkl");
    // The real checkpoint, truncated: the archive's directory is gone.
    let real = std::fs::read(format!("{HUB_TINY}/pytorch_model.bin")).unwrap();
    check(
        &real[..real.len() / 2],
        "no end-of-central-directory record",
    );
    // Its directory intact but pointing past the end.
    let mut cut = real.clone();
    let tail = cut.split_off(real.len() - 4096);
    cut.truncate(real.len() / 2);
    cut.extend(tail);
    let err = formats::torch_bin(&cut, "x.bin").unwrap_err().to_string();
    assert!(err.contains("x.bin"), "{err}");
    // Every entry of the real archive parses.
    assert!(zip::entries(&real, "x.bin").unwrap().len() > 90);
}

#[test]
fn safetensors_whose_offsets_lie_are_refused() {
    let bytes = std::fs::read(format!("{HUB_TINY}/model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let name = "decoder.transformer.ln_f.bias";
    header[name]["data_offsets"][1] = Value::from(u64::MAX / 2);
    let text = header.to_string();
    let mut bad = (text.len() as u64).to_le_bytes().to_vec();
    bad.extend(text.as_bytes());
    bad.extend(&bytes[8 + n..]);
    let err = formats::safetensors(&bad, "m.safetensors")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("m.safetensors: not a readable safetensors file"),
        "{err}"
    );
    let err = formats::safetensors(&bytes[..bytes.len() - 10], "m.safetensors")
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn config_fields_amad_does_not_implement_are_refused_by_name() {
    let base: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{HUB_TINY}/config.json")).unwrap())
            .unwrap();
    for (part, key, value, needle) in [
        (
            "decoder",
            "activation_function",
            Value::from("swish"),
            "decoder.activation_function",
        ),
        (
            "decoder",
            "scale_attn_weights",
            Value::from(false),
            "scale_attn_weights",
        ),
        (
            "decoder",
            "tie_word_embeddings",
            Value::from(false),
            "tie_word_embeddings",
        ),
        (
            "encoder",
            "qkv_bias",
            Value::from(false),
            "encoder.qkv_bias",
        ),
        (
            "encoder",
            "hidden_act",
            Value::from("silu"),
            "encoder.hidden_act",
        ),
    ] {
        let mut v = base.clone();
        v[part][key] = value;
        let err = amad::model::Config::from_json(&v.to_string())
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{key}: {err}");
    }
    // What only changes half-precision numerics is accepted; a flag of another type is refused.
    let mut v = base.clone();
    v["decoder"]["reorder_and_upcast_attn"] = Value::from(true);
    v["decoder"]["activation_function"] = Value::from("gelu_pytorch_tanh");
    amad::model::Config::from_json(&v.to_string()).unwrap();
    v["decoder"]["scale_attn_by_inverse_layer_idx"] = Value::from("yes");
    let err = amad::model::Config::from_json(&v.to_string())
        .unwrap_err()
        .to_string();
    assert!(err.contains("scale_attn_by_inverse_layer_idx"), "{err}");
}

/// Under a 1 MiB binding limit the 6.4 MB token embedding is held in 7 row blocks; lookups and the
/// LM head read across them and the captions stay transformers' own, greedy and with 4 beams.
#[test]
fn an_embedding_larger_than_a_binding_is_split_by_rows() {
    let g = capped_device(1 << 20);
    let c = Captioner::load(&g, Path::new(HUB_TINY)).unwrap();
    let blocks = &c.model.weights.row_blocks[c.model.layout.wte];
    assert_eq!(blocks.len(), 7, "50257 rows of 128 bytes in 1 MiB blocks");
    assert!(blocks.iter().all(|(_, t)| t.bytes() <= 1 << 20));
    let gold = golden();
    let bytes = std::fs::read(format!("{PHOTOS}/coffee.png")).unwrap();
    let px = amad::data::image::decode(&bytes, "coffee").unwrap();
    let patches = c.patches(&g, &px).unwrap();
    for (beams, key) in [(1, "greedy"), (4, "beams4")] {
        let ids = pollster::block_on(c.model.generate(
            &g,
            &patches,
            Generation {
                beams,
                ..Generation::default()
            },
        ))
        .unwrap();
        assert_eq!(ids[0], generated(&gold["coffee"][key]), "{key}");
    }
    // Training needs the table whole: refused with a message, before anything runs.
    let mut step = g.step();
    let ids = step.upload_u32(&[1, 3], &[EOT, 64, 582]).unwrap();
    let fwd = c.model.forward(&mut step, &patches, &ids).unwrap();
    let grads = amad::model::Weights::zeros(&g, &c.model.layout).unwrap();
    let dlogits = step.zeros(fwd.logits().shape()).unwrap();
    let err = c
        .model
        .backward(&mut step, &fwd, &dlogits, &Default::default(), None, &grads)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("larger storage bindings"), "{err}");
}

/// nlpconnect/vit-gpt2-image-captioning's full shape (239 M parameters) with random weights,
/// made here: it loads under WebGPU's default 128 MiB binding limit with its token embedding
/// (154 MB) in two row blocks, and its first tokens and their logits are the CPU reference's
/// (src/reference/captioner.rs, f64); with half-precision weights, in one block, the same tokens.
#[test]
fn a_full_size_captioner_runs_under_the_default_binding_limit() {
    let g = capped_device(128 << 20);
    let (values, model) = full_size_random(&g);
    let (cfg, layout) = (model.cfg.clone(), model.layout.clone());
    // transformers counts 239,195,904: these and the ViT pooler's 590,592, which captioning never reads.
    assert_eq!(layout.param_count(), 239_195_904 - 590_592);
    assert_eq!(model.weights.row_blocks[layout.wte].len(), 2);
    let c = Captioner {
        model,
        tokenizer: amad::model::Tokenizer::new(&["x"]),
        preprocess: amad::model::preprocessor::default_for(224, 16),
        generation: Generation::default(),
    };
    let bytes = std::fs::read(format!("{PHOTOS}/astronaut.png")).unwrap();
    let px = amad::data::image::decode(&bytes, "astronaut").unwrap();
    let patches = c.patches(&g, &px).unwrap();
    let three = Generation {
        max_new_tokens: 3,
        ..Generation::default()
    };
    let ids = pollster::block_on(c.model.generate(&g, &patches, three))
        .unwrap()
        .remove(0);
    assert_eq!(ids.len(), 3, "{ids:?}");
    // The page's per-word heatmap at 14 × 14 patches: a row of 196 per token, each a share of the
    // attention (the rest went to CLS), averaged over 12 layers × 12 heads.
    let heat = pollster::block_on(c.word_attention(&g, &patches, &ids)).unwrap();
    assert_eq!(heat.len(), 3);
    for row in &heat {
        assert_eq!(row.len(), 14 * 14);
        let sum: f32 = row.iter().sum();
        assert!(
            row.iter().all(|&v| v >= 0.0) && sum > 0.0 && sum <= 1.0 + 1e-5,
            "{sum}"
        );
    }
    // The same image on the CPU: the first two tokens, and the logits that chose them.
    let p = amad::reference::captioner::Params {
        layout: &layout,
        values: &values,
    };
    let px64: Vec<f64> = pollster::block_on(patches.read(&g))
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    let states = amad::reference::captioner::encode(&cfg, &p, &px64);
    let mut prefix = vec![EOT];
    for (i, &want) in ids.iter().take(2).enumerate() {
        let cpu = amad::reference::captioner::next_logits(&cfg, &p, &states, &prefix);
        let mut step = g.step();
        let input = step.upload_u32(&[1, prefix.len()], &prefix).unwrap();
        let fwd = c.model.forward(&mut step, &patches, &input).unwrap();
        step.submit().unwrap();
        let all = pollster::block_on(fwd.logits().read(&g)).unwrap();
        let gpu_last = &all[(prefix.len() - 1) * 50257..];
        let argmax = |v: &[f64]| {
            (0..v.len())
                .max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a)))
                .unwrap() as u32
        };
        assert_eq!(argmax(&cpu), want, "token {i}");
        // f32 through 24 layers of 768-wide products against f64: logits up to ~12 differed by at
        // most 1.8e-4 when this was written; the bound is 1e-4 of the largest logit.
        let scale = cpu.iter().map(|v| v.abs()).fold(0.0, f64::max);
        let worst = gpu_last
            .iter()
            .zip(&cpu)
            .map(|(&a, b)| (a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(
            worst <= 1e-4 * scale.max(1.0),
            "token {i}: logits differ by {worst} (scale {scale})"
        );
        prefix.push(want);
    }
    // With half-precision weights the token embedding (77 MB in f16) fits one binding, the
    // weights take half the memory, and the first tokens are the f32 model's.
    let f32_bytes = c.model.weights.device_bytes();
    drop(c);
    let weights =
        amad::model::Weights::from_values_as(&g, &layout, &values, Precision::HalfWeights).unwrap();
    assert_eq!(weights.row_blocks[layout.wte].len(), 1);
    let half = amad::model::Model {
        cfg,
        layout,
        weights,
    };
    let half_bytes = half.weights.device_bytes();
    assert!(
        half_bytes < f32_bytes * 51 / 100,
        "{half_bytes} of {f32_bytes} bytes"
    );
    let half_ids = pollster::block_on(half.generate(&g, &patches, three))
        .unwrap()
        .remove(0);
    assert_eq!(half_ids, ids);
}

/// preprocessor_config.json as ViTImageProcessor writes it: size as an integer or {height,
/// width}, resample 2 or 3, each step switchable; what it reads differently is refused by name.
#[test]
fn preprocessor_configs_read_as_vit_image_processor_reads_them() {
    use amad::model::preprocessor::from_json;
    use amad::ops::image::Resample;
    let p = from_json(r#"{"size": 224, "resample": 3, "do_normalize": false}"#, 16).unwrap();
    assert_eq!(
        (p.size, p.resample, p.resize),
        ((224, 224), Resample::Bicubic, true)
    );
    assert_eq!(
        (p.mean, p.std, p.rescale),
        ([0.0; 3], [1.0; 3], 1.0 / 255.0)
    );
    let p = from_json(
        r#"{"size": {"height": 32, "width": 48}, "do_resize": false, "do_rescale": false, "image_mean": 0.25}"#,
        8,
    )
    .unwrap();
    assert_eq!(
        (p.size, p.resample, p.resize),
        ((32, 48), Resample::Bilinear, false)
    );
    assert_eq!((p.mean, p.std, p.rescale), ([0.25; 3], [0.5; 3], 1.0));
    for (text, needle) in [
        (r#"{"size": {"shortest_edge": 224}}"#, "no height"),
        (r#"{"size": 224, "resample": 1}"#, "resample 1"),
        (r#"{"size": 224, "do_resize": "yes"}"#, "do_resize"),
        (r#"{"size": 224, "image_std": [1, 2]}"#, "image_std"),
    ] {
        let err = from_json(text, 16).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
    // Without resizing, an image of another size is refused with the size wanted.
    let px = amad::data::image::decode(
        &std::fs::read(format!("{PHOTOS}/coffee.png")).unwrap(),
        "coffee",
    )
    .unwrap();
    let mut step = gpu().step();
    let rgba = step.upload_u32(&[px.height, px.width], &px.rgba).unwrap();
    let err = amad::ops::image::preprocess(&mut step, &rgba, &p)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("give it 48×32 images"), "{err}");
}

/// Regressions from fuzzing (scripts/fuzz.sh; the inputs in tests/fixtures/fuzz/).
/// pickle-copies-oom.pkl: 1,108 bytes of DUPs and memo copies that grew past 2 GB when every copy
/// copied its whole value; the copy budget refuses it with a message, at once.
#[test]
fn a_pickle_that_multiplies_its_values_is_refused() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/fuzz/pickle-copies-oom.pkl"
    ))
    .unwrap();
    let err = formats::pickle::state_dict(&bytes, "copies.pkl")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("copies.pkl") && err.contains("values"),
        "{err}"
    );
}

/// A model held to run forward only (`Precision::F32Forward`: how `amad caption` and a
/// distillation's teacher load it) holds the ViT's linear maps [in, out], transposed on loading,
/// and computes what the model held as transformers lays it out does, to the bit: its logits and
/// every attention map, on both kinds of device. It reads back in transformers' layouts, captions
/// as transformers does, and refuses to train.
#[test]
fn a_model_held_to_run_forward_computes_the_same_bits() {
    use amad::model::Model;
    let dir = Path::new(HUB_TINY);
    for images in [true, false] {
        let g = own_device(images);
        let trained = Captioner::load(&g, dir).unwrap();
        let forward = Captioner::load_as(&g, dir, Precision::F32Forward).unwrap();
        assert_eq!(forward.model.precision(), Precision::F32Forward);
        let layout = &trained.model.layout;
        for i in layout.vit_linear_weights() {
            let s = &layout.specs[i].shape;
            let held = forward.model.weights.tensors[i].shape().to_vec();
            assert_eq!(
                held,
                [s[1..].iter().product(), s[0]],
                "{}",
                layout.specs[i].name
            );
        }
        let values = |m: &Model| pollster::block_on(m.weights.values(&g)).unwrap();
        for (i, (a, b)) in values(&forward.model)
            .iter()
            .zip(&values(&trained.model))
            .enumerate()
        {
            same_bits(&layout.specs[i].name, a, b);
        }
        let ids = amad::Tensor::from_u32(&g, &[1, 6], &[EOT, 64, 582, 10311, 257, 6769]).unwrap();
        for photo in ["astronaut", "coffee", "chelsea"] {
            let px = photo_patches(&trained, &g, photo);
            let outputs = |m: &Model| {
                run_on(&g, |s| {
                    let f = m.forward(s, &px, &ids)?;
                    let mut out = vec![f.logits().clone()];
                    out.extend(f.encoder.blocks.iter().map(|b| b.probs.padded().clone()));
                    Ok(out)
                })
            };
            for (k, (a, b)) in outputs(&forward.model)
                .iter()
                .zip(&outputs(&trained.model))
                .enumerate()
            {
                same_bits(&format!("{photo} output {k}, images={images}"), a, b);
            }
        }
        let err = forward.model.check_trainable().unwrap_err().to_string();
        assert!(err.contains("forward only"), "{err}");
    }
    assert_greedy_as_transformers(&Captioner::load_as(gpu(), dir, Precision::F32Forward).unwrap());
}
