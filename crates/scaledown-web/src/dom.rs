//! Small helpers over web-sys: elements by id, events, reading files and URLs in pieces.

use js_sys::Uint8Array;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Document, Element, File, HtmlElement, HtmlInputElement, Response};

/// Files past this size do not fit a 32-bit wasm memory beside the model built from them.
const MAX_FILE_BYTES: f64 = 1.5e9;
/// Files are read in slices of this size, so that the page never holds two whole copies.
const SLICE_BYTES: f64 = 8e6;

pub fn document() -> Document {
    web_sys::window()
        .and_then(|w| w.document())
        .expect("a page with a document")
}

/// The element with `id`; the ids are those of `index.html`.
pub fn element<T: JsCast>(id: &str) -> T {
    document()
        .get_element_by_id(id)
        .unwrap_or_else(|| panic!("index.html has no #{id}"))
        .dyn_into::<T>()
        .unwrap_or_else(|_| panic!("#{id} is not the expected kind of element"))
}

pub fn set_text(id: &str, text: &str) {
    element::<Element>(id).set_text_content(Some(text));
}

pub fn set_html(id: &str, html: &str) {
    element::<Element>(id).set_inner_html(html);
}

pub fn value(id: &str) -> String {
    element::<HtmlInputElement>(id).value()
}

/// A number field in `lo..=hi`, or an error naming the field.
pub fn number(id: &str, label: &str, lo: f64, hi: f64) -> Result<f64, String> {
    let raw = value(id);
    match raw.trim().parse::<f64>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(format!(
            "{label} must be a number from {lo} to {hi} (got `{raw}`)"
        )),
    }
}

/// Sets `data-{key}` on the body: the page's state, for people and for the browser test.
pub fn set_state(key: &str, value: &str) {
    let body: HtmlElement = document().body().expect("a body");
    let _ = body.set_attribute(&format!("data-{key}"), value);
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Runs `f` on each `event` of element `id`, for the page's lifetime.
pub fn on(id: &str, event: &str, f: impl FnMut(web_sys::Event) + 'static) {
    let closure = Closure::<dyn FnMut(web_sys::Event)>::new(f);
    element::<Element>(id)
        .add_event_listener_with_callback(event, closure.as_ref().unchecked_ref())
        .expect("listener added");
    closure.forget();
}

/// Lets the browser draw and handle events between two pieces of work.
pub async fn yield_now() {
    gloo_timers::future::TimeoutFuture::new(0).await;
}

pub fn now_ms() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now())
}

fn js_error(context: &str, e: JsValue) -> String {
    let detail = e
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"));
    format!("{context}: {detail}")
}

/// The whole file, read slice by slice into one buffer.
pub async fn read_file(file: &File) -> Result<Vec<u8>, String> {
    let size = file.size();
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "{}: {:.1} GB is more than a browser tab can hold",
            file.name(),
            size / 1e9
        ));
    }
    let mut bytes = vec![0u8; size as usize];
    let mut at = 0.0;
    while at < size {
        let end = (at + SLICE_BYTES).min(size);
        let slice = file
            .slice_with_f64_and_f64(at, end)
            .map_err(|e| js_error(&file.name(), e))?;
        let buffer = JsFuture::from(slice.array_buffer())
            .await
            .map_err(|e| js_error(&file.name(), e))?;
        Uint8Array::new(&buffer).copy_to(&mut bytes[at as usize..end as usize]);
        at = end;
    }
    Ok(bytes)
}

pub async fn read_text(file: &File) -> Result<String, String> {
    String::from_utf8(read_file(file).await?)
        .map_err(|_| format!("{}: not UTF-8 text", file.name()))
}

/// The body of `url`, streamed piece by piece into one buffer.
pub async fn fetch_bytes(url: &str) -> Result<Vec<u8>, String> {
    let window = web_sys::window().expect("a window");
    let response: Response = JsFuture::from(window.fetch_with_str(url))
        .await
        .map_err(|e| js_error(url, e))?
        .dyn_into()
        .map_err(|e| js_error(url, e))?;
    if !response.ok() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    // The announced length is only a hint for the first allocation, never trusted beyond it.
    let hint = response
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        .min(MAX_FILE_BYTES);
    let mut bytes = Vec::with_capacity(hint as usize);
    let body = response
        .body()
        .ok_or_else(|| format!("{url}: empty response"))?;
    let reader: web_sys::ReadableStreamDefaultReader = body
        .get_reader()
        .dyn_into()
        .map_err(|e| js_error(url, e.into()))?;
    loop {
        let chunk = JsFuture::from(reader.read())
            .await
            .map_err(|e| js_error(url, e))?;
        let done = js_sys::Reflect::get(&chunk, &"done".into()).map_err(|e| js_error(url, e))?;
        if done.as_bool() == Some(true) {
            break;
        }
        let value = js_sys::Reflect::get(&chunk, &"value".into()).map_err(|e| js_error(url, e))?;
        let piece = Uint8Array::new(&value);
        if bytes.len() as f64 + piece.length() as f64 > MAX_FILE_BYTES {
            return Err(format!("{url}: more than a browser tab can hold"));
        }
        let at = bytes.len();
        bytes.resize(at + piece.length() as usize, 0);
        piece.copy_to(&mut bytes[at..]);
    }
    Ok(bytes)
}

pub async fn fetch_text(url: &str) -> Result<String, String> {
    String::from_utf8(fetch_bytes(url).await?).map_err(|_| format!("{url}: not UTF-8 text"))
}

/// The files chosen in `<input type=file id=…>`.
pub fn chosen_files(id: &str) -> Vec<File> {
    let Some(list) = element::<HtmlInputElement>(id).files() else {
        return vec![];
    };
    (0..list.length()).filter_map(|i| list.get(i)).collect()
}
