//! One xterm.js terminal, through `xterm-js-rs` plus thin bindings for what it lacks (xterm 6 removed
//! `writeUtf8`/`setOption`; byte writes, option objects, a fallible `loadAddon` and buffer reads are bound here).

use js_sys::{Function, Object, Reflect, Uint8Array};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::HtmlElement;
use xterm_js_rs::addons::fit::FitAddon;
use xterm_js_rs::addons::web_links::WebLinksAddon;
use xterm_js_rs::addons::webgl::WebglAddon;
use xterm_js_rs::{Terminal, TerminalOptions, Theme};

#[wasm_bindgen]
extern "C" {
    /// The same xterm.js `Terminal` object, seen through the xterm 6 API that `xterm-js-rs` lacks.
    type Xterm6;
    /// `write(data: Uint8Array, callback)`: xterm parses the bytes as UTF-8 (keeping a partial character for
    /// the next write) and calls `callback` once it has.
    #[wasm_bindgen(method, js_name = write)]
    fn write_bytes_then(this: &Xterm6, data: &Uint8Array, callback: &JsValue);
    #[wasm_bindgen(method, catch, js_name = loadAddon)]
    fn try_load_addon(this: &Xterm6, addon: &JsValue) -> Result<(), JsValue>;
    #[wasm_bindgen(method, getter)]
    fn options(this: &Xterm6) -> Object;
}

/// Scrollback lines kept per terminal in the browser.
pub const SCROLLBACK_LINES: u32 = 5000;

/// Colours for light and dark system themes.
pub fn theme(dark: bool) -> Theme {
    let t = Theme::new();
    if dark {
        t.set_background("#17181c");
        t.set_foreground("#e6e6e6");
        t.set_cursor("#f5f5f5");
        t.set_cursor_accent("#17181c");
    } else {
        t.set_background("#fbfbfa");
        t.set_foreground("#1f2328");
        t.set_cursor("#1f2328");
        t.set_cursor_accent("#fbfbfa");
    }
    let _ = Reflect::set(&t, &"selectionBackground".into(), &(if dark { "#3a4a6b" } else { "#b6cdf5" }).into());
    t
}

/// An xterm.js terminal with its fit addon and, while visible, a WebGL renderer where the browser has one.
pub struct Xterm {
    term: Terminal,
    fit: FitAddon,
    webgl: Option<WebglAddon>,
}

impl Xterm {
    /// Creates the terminal and opens it into `parent` (which must be visible and sized).
    pub fn open(parent: HtmlElement, dark: bool) -> Xterm {
        let options = TerminalOptions::new();
        options.set_font_family("\"JetBrains Mono\", ui-monospace, monospace");
        options.set_font_size(14);
        options.set_cursor_blink(true);
        options.set_scrollback(SCROLLBACK_LINES);
        options.set_theme(&theme(dark));
        let term = Terminal::new(&options);
        let fit = FitAddon::new();
        term.load_addon(fit.clone().unchecked_into());
        // Links open in a new tab; the default handler also drops `opener`.
        term.load_addon(WebLinksAddon::new(None, None, None).unchecked_into());
        term.open(parent);
        let x = Xterm { term, fit, webgl: None };
        x.fit();
        x
    }

    pub fn terminal(&self) -> &Terminal {
        &self.term
    }

    fn v6(&self) -> &Xterm6 {
        self.term.unchecked_ref()
    }

    pub fn cols(&self) -> u32 {
        self.term.get_cols()
    }

    pub fn rows(&self) -> u32 {
        self.term.get_rows()
    }

    /// Resizes to the parent element; xterm fires `onResize` when the size changed.
    pub fn fit(&self) {
        self.fit.fit();
    }

    pub fn focus(&self) {
        self.term.focus();
    }

    /// Writes `data` and calls `parsed` once xterm has processed it (for output flow control).
    pub fn write_then(&self, data: &Uint8Array, parsed: impl FnOnce() + 'static) {
        self.v6().write_bytes_then(data, &Closure::once_into_js(parsed));
    }

    pub fn write_str(&self, s: &str) {
        self.term.write(s);
    }

    pub fn set_dark(&self, dark: bool) {
        let _ = Reflect::set(&self.v6().options(), &"theme".into(), &theme(dark));
    }

    /// GPU rendering for the visible terminal; falls back to the DOM renderer where WebGL is missing.
    pub fn show(&mut self) {
        if self.webgl.is_none() {
            let addon = WebglAddon::new(None);
            match self.v6().try_load_addon(&addon) {
                Ok(()) => self.webgl = Some(addon),
                Err(e) => web_sys::console::info_2(&"porthole: WebGL renderer unavailable, using DOM".into(), &e),
            }
        }
        self.fit();
    }

    /// Hidden terminals give their WebGL context back (browsers allow only a few at once).
    pub fn hide(&mut self) {
        if let Some(addon) = self.webgl.take() {
            addon.dispose();
        }
    }

    /// Text of the whole buffer (scrollback and screen), trailing blanks trimmed; for tests and copy-all.
    pub fn text(&self) -> String {
        let buffer = self.term.get_buffer().get_active();
        let mut out = String::new();
        for y in 0..buffer.get_length() {
            let line = buffer.get_line(y);
            let s = line.translate_to_String(true, None, None);
            out.push_str(&s);
            out.push('\n');
        }
        out.trim_end().to_string()
    }

    /// Registers `f` for a callback-style xterm event (`onData`, `onResize`, ...).
    pub fn listen(&self, name: &str, f: &Function) {
        if let Ok(event) = Reflect::get(&self.term, &name.into())
            && let Some(event) = event.dyn_ref::<Function>()
        {
            let _ = event.call1(&self.term, f);
        }
    }

    pub fn dispose(&mut self) {
        self.hide();
        self.term.dispose();
    }
}
