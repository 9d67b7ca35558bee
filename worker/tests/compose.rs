//! `docker-compose.yml` read the way Docker Compose reads it (the Compose Specification, as the
//! `compose_spec` crate implements it, YAML merge keys applied), and checked against the
//! binaries it runs: every variable it gives the gateway or a worker is one that binary reads,
//! and the services the apps wait for exist. No Docker engine is needed (CI has none).

use std::collections::BTreeSet;

use clap::CommandFactory;
use compose_spec::{Compose, ListOrMap, ShortOrLong};

fn compose() -> Compose {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    let text = std::fs::read_to_string(path).expect("docker-compose.yml is readable");
    let compose = Compose::options()
        .apply_merge(true)
        .from_yaml_str(&text)
        .unwrap_or_else(|e| panic!("docker-compose.yml is not a valid Compose file: {e}"));
    compose
        .validate_all()
        .unwrap_or_else(|e| panic!("docker-compose.yml uses an undefined resource: {e}"));
    compose
}

/// The environment variables a binary reads, from its clap definition.
fn env_vars(command: clap::Command) -> BTreeSet<String> {
    command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect()
}

fn environment_of(compose: &Compose, service: &str) -> BTreeSet<String> {
    let service = compose
        .services
        .iter()
        .find(|(name, _)| name.as_str() == service)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service {service}"))
        .1;
    match service.environment.clone() {
        ListOrMap::Map(map) => map.keys().map(|k| k.to_string()).collect(),
        ListOrMap::List(list) => list
            .into_iter()
            .map(|item| item.split('=').next().unwrap_or_default().to_string())
            .collect(),
    }
}

#[test]
fn the_compose_file_is_valid_and_gives_each_binary_only_variables_it_reads() {
    let compose = compose();
    for (service, reads) in [
        ("gateway", env_vars(gateway::config::Cli::command())),
        ("worker", env_vars(worker::config::WorkerConfig::command())),
    ] {
        let given = environment_of(&compose, service);
        assert!(!given.is_empty(), "{service} gets no environment");
        let unknown: Vec<&String> = given.difference(&reads).collect();
        assert!(
            unknown.is_empty(),
            "docker-compose.yml gives {service} variables it does not read: {unknown:?}"
        );
    }
}

#[test]
fn the_apps_wait_only_for_services_the_file_defines() {
    let compose = compose();
    let names: BTreeSet<String> = compose.services.keys().map(|k| k.to_string()).collect();
    for app in ["gateway", "worker"] {
        let service = &compose
            .services
            .iter()
            .find(|(name, _)| name.as_str() == app)
            .expect("app service")
            .1;
        let waits_for: Vec<String> = match &service.depends_on {
            ShortOrLong::Short(list) => list.iter().map(|s| s.to_string()).collect(),
            ShortOrLong::Long(map) => map.keys().map(|s| s.to_string()).collect(),
        };
        assert!(!waits_for.is_empty(), "{app} waits for nothing");
        for dependency in waits_for {
            assert!(
                names.contains(&dependency),
                "{app} waits for undefined {dependency}"
            );
        }
    }
}
