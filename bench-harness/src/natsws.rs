//! The `nats-ws` server kind: nats-server's own WebSocket listener as the server of a row, with
//! devices as NATS clients over WebSocket (`tether-loadgen --protocol nats`). This is what users
//! would deploy instead of tether to expose NATS to devices directly, so it is measured on the
//! same schedule: its RSS per connected device, and the messages it routes between devices.
//!
//! The runner writes a configuration file per run (`runs/BASE-nats-ws.conf`): the client port
//! (unused by the devices), the monitoring port (`/varz`: the connections held), a token every
//! device presents in its `CONNECT` (`authorization { token }`, a fresh random one per run), and
//! `websocket { listen, no_tls: true }`; everything else is nats-server's defaults. The node of
//! the deployment is that one process: `server.*` metrics are nats-server's.

use std::path::Path;
use std::process::Command;

use crate::deploy::{free_addr, pinned, random_secret, start_process, Proc};
use crate::scenario::ServerSpec;

/// The configuration of one run's nats-server.
fn config(client: u16, monitor: u16, websocket: u16, token: &str) -> String {
    format!(
        "listen: \"127.0.0.1:{client}\"\n\
         http: \"127.0.0.1:{monitor}\"\n\
         authorization {{ token: \"{token}\" }}\n\
         websocket {{\n  listen: \"127.0.0.1:{websocket}\"\n  no_tls: true\n}}\n"
    )
}

/// Starts nats-server with its WebSocket listener for a row; returns the process (listening on
/// the WebSocket port, with the monitoring address as its admin), the command line with the
/// configuration, and the devices' token.
pub fn start(spec: &ServerSpec, dir: &Path, base: &str) -> Result<(Proc, String, String), String> {
    let (client, monitor, websocket) = (free_addr()?, free_addr()?, free_addr()?);
    let token = random_secret()?;
    let text = config(client.port(), monitor.port(), websocket.port(), &token);
    let conf = dir.join(format!("runs/{base}-nats-ws.conf"));
    std::fs::write(&conf, &text).map_err(|e| format!("{}: {e}", conf.display()))?;
    let mut cmd = Command::new("nats-server");
    cmd.arg("-c").arg(&conf).args(&spec.extra_args);
    let cmd = pinned(cmd, spec.cpus.as_deref());
    let cmdline = format!(
        "{} ({})",
        crate::deploy::command_line(&cmd),
        text.replace(&token, "<token>")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    );
    let log = dir.join(format!("logs/{base}-server.log"));
    let proc = start_process(cmd, websocket, Some(monitor), false, &log)?;
    Ok((proc, cmdline, token))
}

/// The connections a nats-server holds, from its `/varz` page.
pub fn connections_in_varz(body: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()?
        .get("connections")?
        .as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varz_connections() {
        assert_eq!(
            connections_in_varz(r#"{"server_id":"x","connections":10000,"total_connections":3}"#),
            Some(10_000)
        );
        assert_eq!(connections_in_varz("not json"), None);
    }

    #[test]
    fn the_configuration_has_the_websocket_listener_and_the_token() {
        let c = config(4222, 8222, 8080, "abc");
        assert!(c.contains("websocket {\n  listen: \"127.0.0.1:8080\"\n  no_tls: true\n}"));
        assert!(c.contains("authorization { token: \"abc\" }"));
        assert!(c.contains("http: \"127.0.0.1:8222\""));
    }
}
