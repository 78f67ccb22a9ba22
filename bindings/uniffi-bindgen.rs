//! The workspace's `uniffi-bindgen`, used in library mode by `scripts/gen-bindings`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
