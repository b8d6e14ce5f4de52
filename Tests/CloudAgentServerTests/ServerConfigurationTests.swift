import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import Logging
import Testing

/// One setting of the API contract's table given a valid value, and what the resolved
/// configuration must then hold.
struct ValidSetting: Sendable, CustomTestStringConvertible {
    /// The key of `ServerConfiguration.settings` (and of `resolve`'s `flags`).
    let key: String
    let text: String
    let holds: @Sendable (ServerConfiguration) -> Bool

    var environment: String { ServerConfiguration.settings[key]!.environment }
    var flag: String { ServerConfiguration.settings[key]!.flag }
    var testDescription: String { "\(environment)=\(text)" }

    static let validSecretKey = Data(repeating: 7, count: 32).base64EncodedString()

    static let all: [ValidSetting] = [
        .init(key: "host", text: "0.0.0.0") { $0.host == "0.0.0.0" },
        .init(key: "port", text: "9999") { $0.port == 9999 },
        .init(key: "dataDir", text: "/tmp/cloud-agent-data") { $0.dataDirectory.path == "/tmp/cloud-agent-data" },
        .init(key: "databaseURL", text: "sqlite:/tmp/other.sqlite") {
            $0.databaseURL == "sqlite:/tmp/other.sqlite" && $0.sqlitePath == "/tmp/other.sqlite"
        },
        .init(key: "apiToken", text: "configured-token-123") { $0.apiToken == "configured-token-123" },
        .init(key: "idleTimeout", text: "250ms") { $0.timing.idleTimeoutMs == 250 },
        .init(key: "heartbeatInterval", text: "5s") { $0.timing.heartbeatIntervalMs == 5_000 },
        .init(key: "staleThreshold", text: "2m") { $0.timing.staleThresholdMs == 120_000 },
        .init(key: "pendingTimeout", text: "3m") { $0.timing.pendingTimeoutMs == 180_000 },
        .init(key: "stopGrace", text: "2s") { $0.timing.stopGraceMs == 2_000 },
        .init(key: "stuckAfter", text: "1h") { $0.timing.stuckAfterMs == 3_600_000 },
        .init(key: "maxRuntimes", text: "4") { $0.maxRuntimes == 4 },
        .init(key: "sessionTTL", text: "7d") { $0.timing.sessionTTLMs == 7 * 86_400_000 },
        .init(key: "eventRetention", text: "30d") { $0.timing.eventRetentionMs == 30 * 86_400_000 },
        .init(key: "sandbox", text: "none") { $0.sandbox == .none },
        .init(key: "secretKey", text: validSecretKey) { $0.secretKey == validSecretKey },
        .init(key: "logLevel", text: "debug") { $0.logLevel == .debug },
        .init(key: "agentsFile", text: "/tmp/agents.json") { $0.agentsFile == "/tmp/agents.json" },
        .init(key: "callbackAttempts", text: "9") { $0.callbackMaxAttempts == 9 },
        .init(key: "callbackRetryBase", text: "500ms") { $0.callbackRetryBaseMs == 500 },
        .init(key: "orphanLimit", text: "90m") { $0.timing.orphanLimitMs == 5_400_000 },
        .init(key: "maxEventsPerExecution", text: "5000") { $0.eventCaps.maxEventsPerExecution == 5000 },
        .init(key: "maxRuntimesPerUser", text: "3") { $0.maxRuntimesPerUser == 3 },
        .init(key: "userDailyBudgetUsd", text: "12.5") { $0.userDailyBudgetUsd == 12.5 },
        .init(key: "maxEventBytesPerSession", text: "64MiB") { $0.eventCaps.maxEventBytesPerSession == 64 << 20 },
    ]
}

/// A valid flag value, and an environment value that must lose against it.
struct FlagOverEnvironment: Sendable, CustomTestStringConvertible {
    let key: String
    let flagText: String
    let environmentText: String
    let holds: @Sendable (ServerConfiguration) -> Bool

    var testDescription: String { "\(ServerConfiguration.settings[key]!.flag) \(flagText) over \(environmentText)" }

    static let all: [FlagOverEnvironment] = [
        .init(key: "host", flagText: "::1", environmentText: "0.0.0.0") { $0.host == "::1" },
        .init(key: "port", flagText: "0", environmentText: "9999") { $0.port == 0 },
        .init(key: "dataDir", flagText: "/tmp/from-flag", environmentText: "/tmp/from-env") { $0.dataDirectory.path == "/tmp/from-flag" },
        .init(key: "databaseURL", flagText: "sqlite:/tmp/flag.sqlite", environmentText: "sqlite:/tmp/env.sqlite") {
            $0.databaseURL == "sqlite:/tmp/flag.sqlite"
        },
        .init(key: "apiToken", flagText: "flag-token", environmentText: "env-token") { $0.apiToken == "flag-token" },
        .init(key: "idleTimeout", flagText: "1m", environmentText: "250ms") { $0.timing.idleTimeoutMs == 60_000 },
        .init(key: "heartbeatInterval", flagText: "10s", environmentText: "5s") { $0.timing.heartbeatIntervalMs == 10_000 },
        .init(key: "staleThreshold", flagText: "3m", environmentText: "2m") { $0.timing.staleThresholdMs == 180_000 },
        .init(key: "pendingTimeout", flagText: "500ms", environmentText: "3m") { $0.timing.pendingTimeoutMs == 500 },
        .init(key: "stopGrace", flagText: "1s", environmentText: "2s") { $0.timing.stopGraceMs == 1_000 },
        .init(key: "stuckAfter", flagText: "2h", environmentText: "1h") { $0.timing.stuckAfterMs == 7_200_000 },
        .init(key: "maxRuntimes", flagText: "1", environmentText: "4") { $0.maxRuntimes == 1 },
        .init(key: "sessionTTL", flagText: "1d", environmentText: "7d") { $0.timing.sessionTTLMs == 86_400_000 },
        .init(key: "eventRetention", flagText: "2d", environmentText: "30d") { $0.timing.eventRetentionMs == 2 * 86_400_000 },
        .init(key: "sandbox", flagText: "bwrap", environmentText: "none") { $0.sandbox == .bwrap },
        .init(key: "logLevel", flagText: "critical", environmentText: "trace") { $0.logLevel == .critical },
        .init(key: "agentsFile", flagText: "/tmp/flag.json", environmentText: "/tmp/env.json") { $0.agentsFile == "/tmp/flag.json" },
        .init(key: "callbackAttempts", flagText: "3", environmentText: "9") { $0.callbackMaxAttempts == 3 },
        .init(key: "callbackRetryBase", flagText: "10s", environmentText: "500ms") { $0.callbackRetryBaseMs == 10_000 },
        .init(key: "orphanLimit", flagText: "30s", environmentText: "2h") { $0.timing.orphanLimitMs == 30_000 },
        .init(key: "maxEventBytesPerSession", flagText: "1GB", environmentText: "2KiB") { $0.eventCaps.maxEventBytesPerSession == 1_000_000_000 },
    ]
}

/// A value a setting must refuse.
struct BadSetting: Sendable, CustomTestStringConvertible {
    let key: String
    let text: String

    var testDescription: String { "\(key) = \"\(text)\"" }

    static let durationKeys = [
        "idleTimeout", "heartbeatInterval", "staleThreshold", "pendingTimeout", "stopGrace", "stuckAfter", "sessionTTL",
        "eventRetention", "callbackRetryBase", "orphanLimit",
    ]

    /// Refused whether given as a flag or as an environment variable.
    static let all: [BadSetting] =
        durationKeys.flatMap { key in ["10", "0s", "abc", "1.5s", "-5s", "5 minutes"].map { BadSetting(key: key, text: $0) } } + [
            .init(key: "port", text: "70000"), .init(key: "port", text: "x"), .init(key: "port", text: "-1"),
            .init(key: "maxRuntimes", text: "0"), .init(key: "maxRuntimes", text: "-3"), .init(key: "maxRuntimes", text: "many"),
            .init(key: "callbackAttempts", text: "0"), .init(key: "callbackAttempts", text: "101"), .init(key: "callbackAttempts", text: "x"),
            .init(key: "sandbox", text: "docker"),
            .init(key: "logLevel", text: "loud"),
            .init(key: "databaseURL", text: "mysql://x"), .init(key: "databaseURL", text: "/just/a/path"),
            .init(key: "maxRuntimesPerUser", text: "-1"), .init(key: "maxRuntimesPerUser", text: "few"),
            .init(key: "userDailyBudgetUsd", text: "-1"), .init(key: "userDailyBudgetUsd", text: "ten dollars"), .init(key: "userDailyBudgetUsd", text: "inf"),
            .init(key: "maxEventsPerExecution", text: "0"), .init(key: "maxEventsPerExecution", text: "lots"),
            .init(key: "maxEventBytesPerSession", text: "12 parsecs"), .init(key: "maxEventBytesPerSession", text: "100"),
            .init(key: "maxEventBytesPerSession", text: "99999999999999GiB"),
        ]
}

@Suite("ServerConfiguration.resolve: the API contract's settings, flag over environment")
struct ServerConfigurationTests {
    @Test("with no flags and no environment every setting has the API contract's default")
    func defaults() throws {
        let configuration = try ServerConfiguration.resolve(flags: [:], environment: [:])
        #expect(configuration.host == "127.0.0.1")
        #expect(configuration.port == 8787)
        #expect(configuration.dataDirectory.lastPathComponent == ".cloud-agent")
        #expect(configuration.dataDirectory.path == FileManager.default.currentDirectoryPath + "/.cloud-agent")
        #expect(configuration.databaseURL == nil)
        #expect(configuration.sqlitePath == configuration.dataDirectory.appendingPathComponent("cloud-agent.sqlite").path)
        #expect(configuration.apiToken == nil)
        #expect(configuration.timing.idleTimeoutMs == 900_000)
        #expect(configuration.timing.heartbeatIntervalMs == 30_000)
        #expect(configuration.timing.staleThresholdMs == 90_000)
        #expect(configuration.timing.pendingTimeoutMs == 120_000)
        #expect(configuration.timing.stopGraceMs == 10_000)
        #expect(configuration.timing.stuckAfterMs == 600_000)
        #expect(configuration.maxRuntimes == 32)
        #expect(configuration.timing.sessionTTLMs == 90 * 86_400_000)
        #expect(configuration.timing.eventRetentionMs == 90 * 86_400_000)
        #expect(configuration.sandbox == .auto)
        #expect(configuration.secretKey == nil)
        #expect(configuration.logLevel == .info)
        #expect(configuration.agentsFile == nil)
        #expect(configuration.callbackMaxAttempts == 6)
        #expect(configuration.callbackRetryBaseMs == 2000)
        #expect(configuration.timing.orphanLimitMs == 3_600_000)
        #expect(configuration.maxRuntimesPerUser == nil)
        #expect(try ServerConfiguration.resolve(flags: ["maxRuntimesPerUser": "0"], environment: [:]).maxRuntimesPerUser == nil)
        #expect(configuration.userDailyBudgetUsd == nil)
        #expect(try ServerConfiguration.resolve(flags: ["userDailyBudgetUsd": "0"], environment: [:]).userDailyBudgetUsd == nil)
        #expect(configuration.eventCaps == EventCaps(maxEventsPerExecution: 100_000, maxEventBytesPerSession: 256 * 1024 * 1024))
        #expect(configuration.advertiseURL == nil)
        #expect(configuration.nodeHeartbeatMs == 1000)
        #expect(configuration.nodeLeaseMs == 5000)
        #expect(configuration.wakeUpWindowMs == 10_000)
    }

    @Test("the settings of several nodes: an advertised URL, a node lease longer than its heartbeat")
    func nodeSettings() throws {
        let configuration = try ServerConfiguration.resolve(
            flags: ["advertiseURL": "http://10.0.0.7:8787"],
            environment: [
                "CLOUD_AGENT_NODE_HEARTBEAT": "200ms", "CLOUD_AGENT_NODE_LEASE": "1s", "CLOUD_AGENT_WAKE_UP_WINDOW": "30s",
            ])
        #expect(configuration.advertiseURL == "http://10.0.0.7:8787")
        #expect(configuration.nodeHeartbeatMs == 200)
        #expect(configuration.nodeLeaseMs == 1000)
        #expect(configuration.wakeUpWindowMs == 30_000)
        let badURL = #expect(throws: ServerConfiguration.Invalid.self) {
            try ServerConfiguration.resolve(flags: [:], environment: ["CLOUD_AGENT_ADVERTISE_URL": "ws://nowhere"])
        }
        #expect(badURL?.setting == "CLOUD_AGENT_ADVERTISE_URL")
        let shortLease = #expect(throws: ServerConfiguration.Invalid.self) {
            try ServerConfiguration.resolve(flags: ["nodeLease": "1s"], environment: ["CLOUD_AGENT_NODE_HEARTBEAT": "2s"])
        }
        #expect(shortLease?.setting == "--node-lease")
    }

    @Test("every setting of the table has its flag and its CLOUD_AGENT_* variable")
    func settingNames() {
        let names = ServerConfiguration.settings.values
        #expect(
            Set(names.map(\.environment)) == [
                "CLOUD_AGENT_HOST", "CLOUD_AGENT_PORT", "CLOUD_AGENT_DATA_DIR", "CLOUD_AGENT_DATABASE_URL", "CLOUD_AGENT_API_TOKEN",
                "CLOUD_AGENT_IDLE_TIMEOUT", "CLOUD_AGENT_HEARTBEAT_INTERVAL", "CLOUD_AGENT_STALE_THRESHOLD", "CLOUD_AGENT_PENDING_TIMEOUT",
                "CLOUD_AGENT_STOP_GRACE", "CLOUD_AGENT_STUCK_AFTER", "CLOUD_AGENT_MAX_RUNTIMES", "CLOUD_AGENT_SESSION_TTL",
                "CLOUD_AGENT_EVENT_RETENTION", "CLOUD_AGENT_SANDBOX", "CLOUD_AGENT_SECRET_KEY", "CLOUD_AGENT_LOG_LEVEL",
                "CLOUD_AGENT_AGENTS_FILE", "CLOUD_AGENT_CALLBACK_ATTEMPTS", "CLOUD_AGENT_CALLBACK_RETRY_BASE", "CLOUD_AGENT_ORPHAN_LIMIT",
                "CLOUD_AGENT_ADVERTISE_URL", "CLOUD_AGENT_NODE_HEARTBEAT", "CLOUD_AGENT_NODE_LEASE", "CLOUD_AGENT_WAKE_UP_WINDOW",
                "CLOUD_AGENT_INPUT_TIMEOUT", "CLOUD_AGENT_SANDBOX_EXPOSE", "CLOUD_AGENT_MAX_EVENTS_PER_EXECUTION",
                "CLOUD_AGENT_MAX_EVENT_BYTES_PER_SESSION", "CLOUD_AGENT_MAX_RUNTIMES_PER_USER", "CLOUD_AGENT_USER_DAILY_BUDGET_USD",
            ])
        #expect(
            Set(names.map(\.flag)) == [
                "--host", "--port", "--data-dir", "--database-url", "--api-token", "--idle-timeout", "--heartbeat-interval",
                "--stale-threshold", "--pending-timeout", "--stop-grace", "--stuck-after", "--max-runtimes", "--session-ttl",
                "--event-retention", "--sandbox", "--log-level", "--agents-file", "--callback-attempts", "--callback-retry-base", "--input-timeout",
                "--orphan-limit", "",  // CLOUD_AGENT_SECRET_KEY is env only
                "--advertise-url", "--node-heartbeat", "--node-lease", "--wake-up-window", "--sandbox-expose", "--max-events-per-execution",
                "--max-event-bytes-per-session", "--max-runtimes-per-user", "--user-daily-budget-usd",
            ])
    }

    @Test("--sandbox-expose: comma-separated absolute paths; a relative one is refused naming the setting")
    func sandboxExpose() throws {
        let configuration = try ServerConfiguration.resolve(flags: [:], environment: ["CLOUD_AGENT_SANDBOX_EXPOSE": "/opt/mcp, /srv/tools/bin/notes ,"])
        #expect(configuration.sandboxExpose == ["/opt/mcp", "/srv/tools/bin/notes"])
        let relative = #expect(throws: ServerConfiguration.Invalid.self) {
            try ServerConfiguration.resolve(flags: ["sandboxExpose": "/opt/mcp,tools"], environment: [:])
        }
        #expect(relative?.setting == "--sandbox-expose")
    }

    @Test("every environment variable is read", arguments: ValidSetting.all)
    func environmentIsRead(_ setting: ValidSetting) throws {
        let configuration = try ServerConfiguration.resolve(flags: [:], environment: [setting.environment: setting.text])
        #expect(setting.holds(configuration))
    }

    @Test("every flag is read", arguments: ValidSetting.all.filter { $0.key != "secretKey" })
    func flagIsRead(_ setting: ValidSetting) throws {
        let configuration = try ServerConfiguration.resolve(flags: [setting.key: setting.text], environment: [:])
        #expect(setting.holds(configuration))
    }

    @Test("a flag wins over its environment variable", arguments: FlagOverEnvironment.all)
    func flagWins(_ setting: FlagOverEnvironment) throws {
        let environment = [ServerConfiguration.settings[setting.key]!.environment: setting.environmentText]
        let configuration = try ServerConfiguration.resolve(flags: [setting.key: setting.flagText], environment: environment)
        #expect(setting.holds(configuration))
    }

    @Test("a flag wins even over an invalid environment variable, which is then not read")
    func flagHidesInvalidEnvironment() throws {
        let configuration = try ServerConfiguration.resolve(
            flags: ["idleTimeout": "1m", "sandbox": "none", "port": "0"],
            environment: ["CLOUD_AGENT_IDLE_TIMEOUT": "abc", "CLOUD_AGENT_SANDBOX": "docker", "CLOUD_AGENT_PORT": "x"]
        )
        #expect(configuration.timing.idleTimeoutMs == 60_000)
        #expect(configuration.sandbox == .none)
        #expect(configuration.port == 0)
    }

    @Test("settings combine: several variables and flags at once")
    func combined() throws {
        let configuration = try ServerConfiguration.resolve(
            flags: ["port": "0", "heartbeatInterval": "100ms"],
            environment: [
                "CLOUD_AGENT_PORT": "1234", "CLOUD_AGENT_STALE_THRESHOLD": "300ms", "CLOUD_AGENT_LOG_LEVEL": "WARNING",
                "CLOUD_AGENT_MAX_RUNTIMES": "2", "CLOUD_AGENT_SANDBOX": "bwrap",
            ]
        )
        #expect(configuration.port == 0)
        #expect(configuration.timing.heartbeatIntervalMs == 100)
        #expect(configuration.timing.staleThresholdMs == 300)
        #expect(configuration.logLevel == .warning)
        #expect(configuration.maxRuntimes == 2)
        #expect(configuration.sandbox == .bwrap)
        #expect(configuration.timing.idleTimeoutMs == 900_000)
    }

    @Test("a bad value given as a flag is refused, naming the flag", arguments: BadSetting.all)
    func badFlag(_ bad: BadSetting) {
        let flag = ServerConfiguration.settings[bad.key]!.flag
        let error = #expect(throws: ServerConfiguration.Invalid.self) {
            try ServerConfiguration.resolve(flags: [bad.key: bad.text], environment: [:])
        }
        #expect(error?.setting == flag)
        #expect(error?.description.contains(flag) == true)
    }

    @Test("a bad value given in the environment is refused, naming the variable", arguments: BadSetting.all)
    func badEnvironment(_ bad: BadSetting) {
        let variable = ServerConfiguration.settings[bad.key]!.environment
        let error = #expect(throws: ServerConfiguration.Invalid.self) {
            try ServerConfiguration.resolve(flags: [:], environment: [variable: bad.text])
        }
        #expect(error?.setting == variable)
        #expect(error?.description.contains(variable) == true)
    }

    @Test(
        "a secret key that is not base64 of 32 bytes is refused, naming CLOUD_AGENT_SECRET_KEY",
        arguments: ["short", Data(repeating: 1, count: 16).base64EncodedString(), Data(repeating: 1, count: 33).base64EncodedString()])
    func badSecretKey(_ text: String) {
        let error = #expect(throws: ServerConfiguration.Invalid.self) {
            try ServerConfiguration.resolve(flags: [:], environment: ["CLOUD_AGENT_SECRET_KEY": text])
        }
        #expect(error?.setting == "CLOUD_AGENT_SECRET_KEY")
    }

    @Test(
        "a stale threshold not longer than the heartbeat interval is refused",
        arguments: [
            ["CLOUD_AGENT_STALE_THRESHOLD": "30s"],  // equal to the default heartbeat
            ["CLOUD_AGENT_STALE_THRESHOLD": "10s"],  // shorter than the default heartbeat
            ["CLOUD_AGENT_HEARTBEAT_INTERVAL": "5s", "CLOUD_AGENT_STALE_THRESHOLD": "4999ms"],
        ])
    func staleNotAfterHeartbeat(_ environment: [String: String]) {
        let error = #expect(throws: ServerConfiguration.Invalid.self) {
            try ServerConfiguration.resolve(flags: [:], environment: environment)
        }
        #expect(error?.setting == "CLOUD_AGENT_STALE_THRESHOLD")
    }

    @Test("a heartbeat interval set alone and not shorter than the default stale threshold names the interval")
    func heartbeatNotBeforeStale() {
        let error = #expect(throws: ServerConfiguration.Invalid.self) {
            try ServerConfiguration.resolve(flags: [:], environment: ["CLOUD_AGENT_HEARTBEAT_INTERVAL": "90s"])
        }
        #expect(error?.setting == "CLOUD_AGENT_HEARTBEAT_INTERVAL")
    }

    @Test("a stale threshold just longer than the heartbeat interval is accepted")
    func staleJustAfterHeartbeat() throws {
        let configuration = try ServerConfiguration.resolve(
            flags: ["heartbeatInterval": "5s", "staleThreshold": "5001ms"], environment: [:]
        )
        #expect(configuration.timing.heartbeatIntervalMs == 5_000)
        #expect(configuration.timing.staleThresholdMs == 5_001)
    }

    @Test("a stale threshold given as a flag and refused against the heartbeat names the flag")
    func staleNotAfterHeartbeatAsFlag() {
        let error = #expect(throws: ServerConfiguration.Invalid.self) {
            try ServerConfiguration.resolve(flags: ["staleThreshold": "10s"], environment: [:])
        }
        #expect(error?.setting == "--stale-threshold")
    }
}
