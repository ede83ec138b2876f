//! The browser entry point. This opens the user's GPU through WebGPU, proves it computes with a
//! small matmul read back asynchronously, and reports the adapter, or says plainly what is
//! missing; the caption and distill tabs build on it.

use crate::ops::matmul::matmul;
use crate::{Error, Gpu, Result, Tensor};
use wasm_bindgen::prelude::*;

fn element(id: &str) -> Option<web_sys::Element> {
    web_sys::window()?.document()?.get_element_by_id(id)
}

fn set_text(id: &str, text: &str) {
    if let Some(el) = element(id) {
        el.set_text_content(Some(text));
    }
}

fn show_missing(text: &str) {
    set_text("webgpu-missing", text);
    if let Some(el) = element("webgpu-missing") {
        let _ = el.remove_attribute("hidden");
    }
}

/// [[1 2 3] [4 5 6]] · [[7 8] [9 10] [11 12]] on the GPU, read back without blocking.
async fn self_test(gpu: &Gpu) -> Result<()> {
    let a = Tensor::from_slice(gpu, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
    let b = Tensor::from_slice(gpu, &[3, 2], &[7.0, 8.0, 9.0, 10.0, 11.0, 12.0])?;
    let mut step = gpu.step();
    let c = matmul(&mut step, &a, &b, false, false, None)?;
    step.submit()?;
    let got = c.read(gpu).await?;
    if got != [58.0, 64.0, 139.0, 154.0] {
        return Err(Error::Gpu(format!(
            "the GPU self-test computed {got:?} instead of [58, 64, 139, 154]"
        )));
    }
    Ok(())
}

#[wasm_bindgen(start)]
pub fn start() {
    wasm_bindgen_futures::spawn_local(async {
        let gpu = match Gpu::new().await {
            Ok(gpu) => gpu,
            Err(e) => return show_missing(&e.to_string()),
        };
        set_text("adapter", &format!("GPU: {}", gpu.describe()));
        match self_test(&gpu).await {
            Ok(()) => set_text(
                "gpu-self-test",
                "GPU self-test passed (matmul on your GPU, read back).",
            ),
            Err(e) => show_missing(&e.to_string()),
        }
    });
}
