//! `replay TARGET PATH...`: runs a fuzz target once over each file (or each file of each
//! directory) without AFL, printing the file before running it, so a crash names its input and
//! shows the panic message and backtrace. `replay --list` prints the targets.

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--list") {
        for (name, _) in consulta_fuzz::TARGETS {
            println!("{name}");
        }
        return;
    }
    let Some((name, paths)) = args.split_first() else {
        eprintln!("usage: replay TARGET FILE|DIR... | replay --list");
        std::process::exit(2);
    };
    let Some(&(_, target)) = consulta_fuzz::TARGETS.iter().find(|(n, _)| n == name) else {
        eprintln!("no target {name}; replay --list");
        std::process::exit(2);
    };
    // As under AFL (afl::fuzz! aborts on any panic): a panic that the code under test catches
    // (the SFU isolates a participant's panic) is a finding too.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    let mut files: Vec<PathBuf> = Vec::new();
    for p in paths {
        let p = PathBuf::from(p);
        match std::fs::read_dir(&p) {
            Ok(dir) => files.extend(
                dir.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_file()),
            ),
            Err(_) => files.push(p),
        }
    }
    files.sort();
    for f in &files {
        eprintln!("{name}: {}", f.display());
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        target(&data);
    }
    eprintln!("{name}: {} inputs ran", files.len());
}
