//! A plain WASI command (`wasi:cli/run`), built without the SDK: a well-formed component that
//! does not export `keyhole:plugin/tools`, which the host must refuse at upload.

fn main() {
    println!("not a keyhole plugin");
}
