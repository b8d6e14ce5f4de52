// swift-tools-version:6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "cloud-agent",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "cloud-agent", targets: ["cloud-agent"]),
        .executable(name: "cloud-agent-runtime", targets: ["cloud-agent-runtime"]),
        .executable(name: "cloud-agent-bench", targets: ["cloud-agent-bench"]),
        .executable(name: "cloud-agent-model-server", targets: ["cloud-agent-model-server"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket.git", from: "2.8.1"),
        .package(url: "https://github.com/hummingbird-project/swift-websocket.git", from: "1.6.2"),
        .package(url: "https://github.com/swiftlang/swift-subprocess.git", from: "1.0.2"),
        .package(url: "https://github.com/apple/swift-system.git", from: "1.8.1"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
    ],
    targets: [
        // The one JSON value (`JSONValue`) and its text writer (`JSONText`), shared by the core and
        // the runtime protocol (so by the control plane and the runtime). No dependencies.
        .target(name: "CloudAgentJSON", swiftSettings: strict),
        // Domain types, the idle and liveness rules, validation, the store protocol. No I/O.
        .target(
            name: "CloudAgentCore",
            dependencies: [
                "CloudAgentJSON",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict
        ),
        // The runtime protocol's frames, shared by the control plane and the runtime.
        .target(name: "CloudAgentProtocol", dependencies: ["CloudAgentJSON"], swiftSettings: strict),
        // Agent adapters: each agent's headless command line and the parser of its output into
        // normalized events, its outcome and its conversation id; the agents file. No I/O.
        .target(name: "CloudAgentAgents", dependencies: ["CloudAgentProtocol"], swiftSettings: strict),
        // Workspaces (git), setup commands, launching runtimes in a sandbox, process-group signals.
        .target(
            name: "CloudAgentSandbox",
            dependencies: [
                "CloudAgentCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: strict
        ),
        // The runtime: keeps a WebSocket to the control plane, runs agents, reports events.
        // Links no HTTP server and no database.
        .target(
            name: "CloudAgentRuntime",
            dependencies: [
                "CloudAgentProtocol",
                "CloudAgentAgents",
                .product(name: "WSClient", package: "swift-websocket"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "cloud-agent-runtime",
            dependencies: ["CloudAgentRuntime"],
            swiftSettings: strict
        ),
        // The SQLite (GRDB) implementation of SessionStore.
        .target(
            name: "CloudAgentSQLite",
            dependencies: [
                "CloudAgentCore",
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            swiftSettings: strict
        ),
        // The PostgreSQL (postgres-nio) implementation of SessionStore, for several nodes on one database.
        .target(
            name: "CloudAgentPostgres",
            dependencies: [
                "CloudAgentCore",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // Hummingbird application: REST API, auth, wake-up scheduler, metrics.
        // The engine: the session ledger (one transaction per change, decided by the core's pure
        // reducers, with the session's rules and next wake-up), the effects after the commit, the
        // runtimes' lifecycle and connections, the wake-up scheduler, heartbeats, callbacks and the
        // nodes of a cluster. No HTTP server: the API and the WebSocket endpoints are the server's.
        .target(
            name: "CloudAgentEngine",
            dependencies: [
                "CloudAgentCore",
                "CloudAgentSandbox",
                "CloudAgentProtocol",
                "CloudAgentAgents",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "CloudAgentServer",
            dependencies: [
                "CloudAgentEngine",
                "CloudAgentCore",
                "CloudAgentSandbox",
                "CloudAgentProtocol",
                "CloudAgentAgents",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            resources: [.copy("Resources/openapi.yaml"), .copy("Resources/ui")],
            swiftSettings: strict
        ),
        // ArgumentParser commands: serve, tokens.
        .target(
            name: "CloudAgentCLI",
            dependencies: [
                "CloudAgentCore",
                "CloudAgentModelServer",
                "CloudAgentPostgres",
                "CloudAgentSQLite",
                "CloudAgentServer",
                "CloudAgentEngine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "WSClient", package: "swift-websocket"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "cloud-agent",
            dependencies: ["CloudAgentCLI"],
            swiftSettings: strict
        ),
        // Benchmarks against raw baselines (BENCHMARKS.md, scripts/benchmarks.sh).
        .executableTarget(
            name: "cloud-agent-bench",
            dependencies: [
                "CloudAgentCLI",
                // Its throwaway PostgreSQL (`--postgres`) is the tests' (`ThrowawayPostgres`).
                "CloudAgentTestSupport",
                "CloudAgentCore",
                "CloudAgentPostgres",
                "CloudAgentSQLite",
                "CloudAgentServer",
                "CloudAgentEngine",
                "CloudAgentProtocol",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "WSClient", package: "swift-websocket"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            swiftSettings: strict
        ),
        // The scripted model server: the Anthropic Messages and OpenAI Responses APIs answered
        // from a script, for running real agent CLIs offline (docs/model-server.md).
        .target(
            name: "CloudAgentModelServer",
            dependencies: [
                "CloudAgentCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "cloud-agent-model-server",
            dependencies: [
                "CloudAgentModelServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "CloudAgentModelServerTests",
            dependencies: [
                "CloudAgentModelServer",
                "CloudAgentCore",
                "CloudAgentTestSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "CloudAgentJSONTests",
            dependencies: ["CloudAgentJSON"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "CloudAgentAgentsTests",
            dependencies: ["CloudAgentAgents", "CloudAgentProtocol"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "CloudAgentCoreTests",
            dependencies: ["CloudAgentCore", "CloudAgentTestSupport"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "CloudAgentRuntimeTests",
            dependencies: [
                "CloudAgentRuntime",
                "CloudAgentAgents",
                "CloudAgentProtocol",
                "CloudAgentTestSupport",
                // A fake control plane for the end-to-end tests of the runtime process.
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "CloudAgentSandboxTests",
            dependencies: ["CloudAgentSandbox", "CloudAgentCore", "CloudAgentTestSupport", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict
        ),
        // What the test targets share: waits, test processes, log capture, the gates that bound how
        // many heavy tests run at once, and a throwaway PostgreSQL cluster.
        .target(
            name: "CloudAgentTestSupport",
            dependencies: [
                "CloudAgentCore",
                "CloudAgentSandbox",
                "CloudAgentPostgres",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            path: "Tests/CloudAgentTestSupport",
            swiftSettings: strict
        ),
        .testTarget(
            name: "CloudAgentStoreTests",
            dependencies: [
                "CloudAgentCore",
                "CloudAgentTestSupport",
                "CloudAgentSQLite",
                "CloudAgentPostgres",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "CloudAgentServerTests",
            dependencies: [
                "CloudAgentCore",
                "CloudAgentTestSupport",
                "CloudAgentPostgres",
                "CloudAgentSQLite",
                "CloudAgentEngine",
                "CloudAgentServer",
                "CloudAgentCLI",
                "CloudAgentSandbox",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "WSClient", package: "swift-websocket"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ],
            swiftSettings: strict
        ),
    ],
    swiftLanguageModes: [.v6]
)
