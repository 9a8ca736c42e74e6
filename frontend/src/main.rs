//! Porthole's browser UI: a container picker and tabbed terminals, in Leptos (client-side rendered,
//! compiled to wasm32 by Trunk). Talks to the server over Socket.IO (terminals, live container events) and
//! Leptos server functions (container and terminal lists), all typed by the shared `app` crate. `/#/recordings` is
//! the Recordings page (REST and asciinema-player).

mod recordings;
mod socket;
mod tabs;
mod term;
mod terminals;
mod ui;

fn main() {
    console_error_panic_hook::set_once();
    if recordings::is_recordings_url() {
        leptos::mount::mount_to_body(recordings::RecordingsPage);
    } else {
        leptos::mount::mount_to_body(ui::App);
    }
}
