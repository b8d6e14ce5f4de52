import CloudAgentAgents
import Foundation
import Logging

/// The runtime's settings, read from the environment the control plane starts it with. The
/// runtime's secret is not here: it arrives on standard input, never in the environment.
public struct RuntimeConfiguration: Sendable, Equatable {
    /// The control plane's runtime route, e.g. `ws://127.0.0.1:8787/v1/runtime/connect`: the
    /// node that started the runtime, tried first.
    public var controlURL: String
    /// The runtime routes of the control plane's other nodes (they share one database, so any of
    /// them serves the runtime), tried after `controlURL` (`ControlEndpoints`).
    public var otherControlURLs: [String] = []
    public var sessionId: String
    /// The id of this runtime process, chosen by the control plane.
    public var runtimeId: String
    /// The agents' working directory.
    public var workspace: String
    public var logLevel: Logger.Level
    /// SIGTERM → this long → SIGKILL for a killed agent; the control plane's welcome replaces it.
    public var stopGrace: Duration
    /// Until the welcome says otherwise.
    public var heartbeatInterval: Duration
    /// The names of the session's secrets among the agent's variables: their values are masked
    /// in everything the agent prints.
    public var secretNames: [String] = []
    /// The session's idle timeout, until the welcome or a settings frame says otherwise: without
    /// a control plane the runtime stops itself once idle this long (`OrphanPolicy`).
    public var idleTimeout: Duration = .seconds(15 * 60)
    /// Without a control plane this long, the runtime stops itself, busy or not (`OrphanPolicy`).
    public var orphanLimit: Duration = .seconds(60 * 60)
    /// How long the control plane gives this runtime to connect (its pending timeout): never
    /// welcomed, the runtime does not stop as idle before then (`OrphanPolicy`).
    public var connectTimeout: Duration = .zero
    /// The bound of the outbox of unacknowledged events, in bytes of their frames (`EventOutbox`).
    public var outboxLimitBytes = EventOutbox.defaultLimitBytes

    public init(
        controlURL: String,
        sessionId: String,
        runtimeId: String,
        workspace: String,
        logLevel: Logger.Level = .info,
        stopGrace: Duration = .seconds(10),
        heartbeatInterval: Duration = .seconds(30)
    ) {
        self.controlURL = controlURL
        self.sessionId = sessionId
        self.runtimeId = runtimeId
        self.workspace = workspace
        self.logLevel = logLevel
        self.stopGrace = stopGrace
        self.heartbeatInterval = heartbeatInterval
    }

    /// Every endpoint the runtime may connect to: `controlURL` first, then `otherControlURLs`,
    /// each once.
    public var controlURLs: [String] { ControlEndpoints.unique([controlURL] + otherControlURLs) }

    /// Reads `CLOUD_AGENT_CONTROL_URL`, `SESSION_ID`, `CLOUD_AGENT_RUNTIME_ID` (required),
    /// `CLOUD_AGENT_CONTROL_URLS` (comma-separated, every node's route; default none),
    /// `CLOUD_AGENT_WORKSPACE` (default: `currentDirectory`), `CLOUD_AGENT_LOG_LEVEL` (default
    /// info), `CLOUD_AGENT_STOP_GRACE_MS` (default 10000), `CLOUD_AGENT_IDLE_TIMEOUT_MS` (default
    /// 900000), `CLOUD_AGENT_ORPHAN_LIMIT_MS` (default 3600000), `CLOUD_AGENT_CONNECT_TIMEOUT_MS` (default 0) and
    /// `CLOUD_AGENT_OUTBOX_LIMIT_BYTES` (default 64 MiB).
    public init(environment: [String: String], currentDirectory: String) throws(RuntimeConfigurationError) {
        func required(_ name: String) throws(RuntimeConfigurationError) -> String {
            guard let value = environment[name], !value.isEmpty else { throw RuntimeConfigurationError("\(name) is not set") }
            return value
        }
        let controlURL = try required("CLOUD_AGENT_CONTROL_URL")
        guard ControlEndpoints.isValid(controlURL) else {
            throw RuntimeConfigurationError("CLOUD_AGENT_CONTROL_URL must be a ws:// or wss:// URL")
        }
        let otherControlURLs = (environment["CLOUD_AGENT_CONTROL_URLS"] ?? "").split(separator: ",")
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard otherControlURLs.allSatisfy(ControlEndpoints.isValid) else {
            throw RuntimeConfigurationError("CLOUD_AGENT_CONTROL_URLS must be comma-separated ws:// or wss:// URLs")
        }
        let workspace = environment["CLOUD_AGENT_WORKSPACE"].flatMap { $0.isEmpty ? nil : $0 } ?? currentDirectory
        var logLevel = Logger.Level.info
        if let name = environment["CLOUD_AGENT_LOG_LEVEL"], !name.isEmpty {
            guard let level = Logger.Level(rawValue: name.lowercased()) else {
                throw RuntimeConfigurationError("CLOUD_AGENT_LOG_LEVEL must be one of trace, debug, info, notice, warning, error, critical")
            }
            logLevel = level
        }
        /// A whole number of at least `minimum`, or nil when the variable is not set.
        func number(_ name: String, minimum: Int64, unit: String) throws(RuntimeConfigurationError) -> Int64? {
            guard let text = environment[name], !text.isEmpty else { return nil }
            guard let value = Int64(text), value >= minimum else {
                throw RuntimeConfigurationError("\(name) must be a whole number of \(unit)\(minimum > 0 ? ", at least \(minimum)" : "")")
            }
            return value
        }
        let stopGrace = try number("CLOUD_AGENT_STOP_GRACE_MS", minimum: 0, unit: "milliseconds").map { Duration.milliseconds($0) } ?? .seconds(10)
        let idleTimeout = try number("CLOUD_AGENT_IDLE_TIMEOUT_MS", minimum: 1, unit: "milliseconds")
        let orphanLimit = try number("CLOUD_AGENT_ORPHAN_LIMIT_MS", minimum: 1, unit: "milliseconds")
        let connectTimeout = try number("CLOUD_AGENT_CONNECT_TIMEOUT_MS", minimum: 0, unit: "milliseconds")
        let outboxLimit = try number("CLOUD_AGENT_OUTBOX_LIMIT_BYTES", minimum: 1, unit: "bytes")
        self.init(
            controlURL: controlURL,
            sessionId: try required("SESSION_ID"),
            runtimeId: try required("CLOUD_AGENT_RUNTIME_ID"),
            workspace: workspace,
            logLevel: logLevel,
            stopGrace: stopGrace
        )
        self.otherControlURLs = otherControlURLs
        if let idleTimeout { self.idleTimeout = .milliseconds(idleTimeout) }
        if let orphanLimit { self.orphanLimit = .milliseconds(orphanLimit) }
        if let connectTimeout { self.connectTimeout = .milliseconds(connectTimeout) }
        if let outboxLimit { outboxLimitBytes = Int(clamping: outboxLimit) }
        secretNames = (environment["CLOUD_AGENT_SECRET_NAMES"] ?? "").split(separator: ",").map(String.init).filter { !$0.isEmpty }
    }

    /// What the agent's output is masked with: the values of `secretNames` in its environment.
    public func secretMask(agentEnvironment: [String: String]) -> SecretMask {
        SecretMask(values: secretNames.compactMap { agentEnvironment[$0] })
    }

    /// The environment an agent runs with: the runtime's own, minus every `CLOUD_AGENT_*`
    /// variable (the runtime's configuration is none of the agent's business).
    public static func agentEnvironment(from environment: [String: String]) -> [String: String] {
        environment.filter { !$0.key.hasPrefix("CLOUD_AGENT_") }
    }
}

/// A missing or malformed setting; the runtime exits at once.
public struct RuntimeConfigurationError: Error, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
