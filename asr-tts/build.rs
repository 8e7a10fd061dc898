//! Generates bindings for Debian's pocketsphinx (0.8) with bindgen: the hand-written
//! declarations of the `pocketsphinx` crate are stale against these headers.

// A build script reports failure by panicking with a message; that is what these do.
#![allow(clippy::expect_used)]

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let ps = pkg_config::Config::new()
        .probe("pocketsphinx")
        .expect("pocketsphinx development files (libpocketsphinx-dev) are needed: run deploy/install-deps.sh");
    let mut builder = bindgen::Builder::default()
        .header_contents("ps_wrapper.h", "#include <pocketsphinx.h>\n")
        .allowlist_function("ps_(init|free|start_utt|process_raw|end_utt|get_hyp|default_search_args|args|get_in_speech)")
        .allowlist_function("cmd_ln_(init|parse_r|free_r|set_str_r)")
        .allowlist_function("err_set_loglevel|err_set_logfp")
        .allowlist_type("ps_decoder_t|cmd_ln_t|arg_t")
        .layout_tests(false)
        .generate_comments(false);
    for path in &ps.include_paths {
        builder = builder.clang_arg(format!("-I{}", path.display()));
    }
    let bindings = builder.generate().expect("bindgen over pocketsphinx.h");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    bindings
        .write_to_file(out.join("pocketsphinx.rs"))
        .expect("write bindings");
}
