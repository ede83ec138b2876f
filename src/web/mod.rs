//! The browser entry point. This opens the user's GPU through WebGPU and reports the adapter, or
//! says plainly what is missing; the caption and distill tabs build on it.

use wasm_bindgen::prelude::*;

fn set_text(id: &str, text: &str) {
    if let Some(el) = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.get_element_by_id(id))
    {
        el.set_text_content(Some(text));
    }
}

fn show(id: &str) {
    if let Some(el) = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.get_element_by_id(id))
    {
        let _ = el.remove_attribute("hidden");
    }
}

#[wasm_bindgen(start)]
pub fn start() {
    wasm_bindgen_futures::spawn_local(async {
        match crate::Gpu::new().await {
            Ok(gpu) => set_text("adapter", &format!("GPU: {}", gpu.describe())),
            Err(e) => {
                set_text("webgpu-missing", &e.to_string());
                show("webgpu-missing");
            }
        }
    });
}
