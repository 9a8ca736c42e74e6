//! Several Docker hosts on one server (`--docker-host NAME=URL`, repeated): the container list and terminals
//! say which host, `HOST/REF` picks one, a bare reference works where it is unique and is refused as
//! `ambiguous_container` where it is not, and terminals, exit codes and container events work on every host.
//! The second daemon is the test bed's (`scripts/testbed.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use app::protocol::{ContainerSummary, ErrorCode, ExitReason, TerminalInfo};
use bollard::Docker;
use common::*;

/// A container of the bash image on `docker`, with `/tmp/where` saying `marker`.
async fn marked(docker: Docker, name: &str, marker: &str) -> TestContainer {
    let c = TestContainer::start_named(docker, name, "hosts", &bash_image(), &[]).await;
    let (code, out) = c.exec(&["sh", "-c", &format!("echo {marker} > /tmp/where")]).await;
    assert_eq!(code, 0, "{out}");
    c
}

async fn containers(server: &porthole_server::RunningServer) -> Vec<ContainerSummary> {
    let res = get(format!("{}/api/v1/containers", base_url(server))).await;
    assert!(res.status().is_success(), "{}", res.status());
    res.json().await.unwrap()
}

async fn terminals(server: &porthole_server::RunningServer) -> Vec<TerminalInfo> {
    get(format!("{}/api/v1/terminals", base_url(server))).await.json().await.unwrap()
}

#[tokio::test]
async fn every_host_is_listed_named_and_reachable_and_a_bare_name_on_two_is_refused() {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (only_local, only_two, same) = (
        format!("porthole-it-hosts-a-{suffix}"),
        format!("porthole-it-hosts-b-{suffix}"),
        format!("porthole-it-hosts-s-{suffix}"),
    );
    let a = marked(docker().await, &only_local, "on-local").await;
    let b = marked(second_docker().await, &only_two, "on-two").await;
    let same_local = marked(docker().await, &same, "same-local").await;
    let same_two = marked(second_docker().await, &same, "same-two").await;
    let server = start_server(two_hosts_config()).await;

    // The list: every host's containers, each with its host, ids qualified by it.
    let list = containers(&server).await;
    let find = |name: &str, host: &str| {
        list.iter().find(|c| c.name == name && c.host == host).unwrap_or_else(|| panic!("{name} on {host} in {list:?}"))
    };
    assert_eq!(find(&only_local, "local").id, format!("local/{}", a.id));
    assert_eq!(find(&only_two, "two").id, format!("two/{}", b.id));
    assert_eq!(find(&same, "local").id, format!("local/{}", same_local.id));
    assert_eq!(find(&same, "two").id, format!("two/{}", same_two.id));
    assert!(list.iter().all(|c| c.id.starts_with(&format!("{}/", c.host))), "{list:?}");

    let client = TestClient::connect(&server).await;
    // A bare name found on one host only; a name qualified by its host; an id from the list.
    for (reference, marker) in [
        (only_two.clone(), "on-two"),
        (only_local.clone(), "on-local"),
        (format!("two/{same}"), "same-two"),
        (format!("local/{same}"), "same-local"),
        (format!("two/{}", &same_two.id[..12]), "same-two"),
        (find(&same, "two").id.clone(), "same-two"),
    ] {
        let t = client.start(shell_request(&reference)).await.unwrap_or_else(|e| panic!("{reference}: {e:?}"));
        client.run(&t.terminal_id, "cat /tmp/where", &format!("{marker}\r\n")).await;
        client.close(&t.terminal_id).await.unwrap();
    }

    // The same name on both: refused, naming both hosts and the way out.
    let err = client.start(shell_request(&same)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::AmbiguousContainer, "{err:?}");
    for part in ["local", "two", &format!("HOST/{same}")] {
        assert!(err.message.contains(part), "{part} in {}", err.message);
    }
    // A host that does not exist, or a container a host does not have.
    for missing in [format!("three/{only_two}"), format!("local/{only_two}")] {
        let err = client.start(shell_request(&missing)).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::ContainerNotFound, "{missing}: {err:?}");
    }

    // A terminal on the second host: listed with its host, its exit code comes back (the exec is inspected on
    // the right daemon), and stopping its container there ends another one (that host's events reach us).
    let t = client.start(shell_request(&only_two)).await.unwrap();
    let info = terminals(&server).await.into_iter().find(|i| i.terminal_id == t.terminal_id).unwrap();
    assert_eq!((info.host.as_str(), info.container_id.clone()), ("two", format!("two/{}", b.id)));
    assert_eq!(info.container_name, only_two);
    client.input(&t.terminal_id, "exit 3\n").await;
    let exit = client.wait_exit(&t.terminal_id).await;
    assert_eq!((exit.reason, exit.exit_code), (ExitReason::Exited, Some(3)));
    let t = client.start(shell_request(&only_two)).await.unwrap();
    client.run(&t.terminal_id, "echo up-$((40+2))", "up-42").await;
    b.stop().await;
    let exit = client.wait_exit(&t.terminal_id).await;
    assert_eq!(exit.reason, ExitReason::ContainerStopped, "{exit:?}");
    client.wait_change(&format!("two/{}", b.id), "die").await;
    // The other host's terminals did not notice.
    let t = client.start(shell_request(&only_local)).await.unwrap();
    client.run(&t.terminal_id, "cat /tmp/where", "on-local\r\n").await;
}

#[tokio::test]
async fn one_host_keeps_docker_ids_and_takes_its_own_name_as_a_prefix() {
    let c = TestContainer::start("hosts-one", &bash_image()).await;
    let server = start_server(test_config()).await;
    let list = containers(&server).await;
    let listed = list.iter().find(|s| s.name == c.name).expect("listed");
    assert_eq!((listed.id.as_str(), listed.host.as_str()), (c.id.as_str(), "local"));
    let client = TestClient::connect(&server).await;
    let t = client.start(shell_request(&format!("local/{}", c.name))).await.unwrap();
    client.run(&t.terminal_id, "echo via-$((1+1))", "via-2").await;
    let info = terminals(&server).await.into_iter().find(|i| i.terminal_id == t.terminal_id).unwrap();
    assert_eq!((info.host.as_str(), info.container_id.as_str()), ("local", c.id.as_str()));
    let err = client.start(shell_request(&format!("elsewhere/{}", c.name))).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ContainerNotFound, "{err:?}");
}

#[tokio::test]
async fn a_host_that_does_not_answer_leaves_the_others_working() {
    let c = TestContainer::start("hosts-down", &bash_image()).await;
    let mut config = test_config();
    config.docker_hosts =
        vec!["local=unix:///var/run/docker.sock".into(), "gone=unix:///run/porthole-no-such-docker.sock".into()];
    let server = start_server(config).await;
    // The list has what the answering host has.
    let list = containers(&server).await;
    assert!(list.iter().any(|s| s.name == c.name && s.host == "local"), "{list:?}");
    let client = TestClient::connect(&server).await;
    let t = client.start(shell_request(&c.name)).await.unwrap();
    client.run(&t.terminal_id, "echo fine-$((2+3))", "fine-5").await;
    // What is only on the silent host (or might be there) is a clear docker_unavailable.
    for reference in ["gone/web".to_string(), format!("{}-not-here", c.name)] {
        let err = client.start(shell_request(&reference)).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::DockerUnavailable, "{reference}: {err:?}");
    }
}
