//! `nimbus serve --help` lists every setting with its environment variable and default.

use std::process::Command;

use clap::Args;

#[test]
fn serve_help_lists_every_flag_with_its_env_and_default() {
    let out = Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .args(["serve", "--help"])
        .env_clear()
        .output()
        .expect("run nimbus serve --help");
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).expect("utf-8 help");
    // One block per option: its flag line and the description lines after it.
    let mut blocks: Vec<String> = Vec::new();
    for line in help.lines() {
        match blocks.last_mut() {
            Some(b) if !line.trim_start().starts_with('-') => {
                b.push('\n');
                b.push_str(line);
            }
            _ => blocks.push(line.trim_start().to_string()),
        }
    }
    let settings = nimbus_server::Settings::augment_args(clap::Command::new("serve"));
    let mut flags = 0;
    for arg in settings.get_arguments() {
        let long = arg.get_long().expect("every setting has a long flag");
        let env = arg
            .get_env()
            .and_then(|e| e.to_str())
            .expect("every setting has a NIMBUS_* variable");
        assert!(env.starts_with("NIMBUS_"), "--{long}: {env}");
        let flag = format!("--{long}");
        let block = blocks
            .iter()
            .find(|b| b.split_whitespace().next() == Some(flag.as_str()))
            .unwrap_or_else(|| panic!("{flag} missing from:\n{help}"));
        assert!(
            block.contains("[default: "),
            "{flag} has no default:\n{block}"
        );
        assert!(
            block.contains(&format!("[env: {env}")),
            "{flag} has no env:\n{block}"
        );
        flags += 1;
    }
    assert!(flags > 60, "{flags} flags");
    assert!(help.contains("--config"), "{help}");
}
