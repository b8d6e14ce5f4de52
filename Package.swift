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
    ],
    targets: [
        // Domain types, the idle and liveness rules, validation, the store protocol. No I/O.
        .target(
            name: "CloudAgentCore",
            dependencies: [
                .product(name: "Crypto", package: "swift-crypto"),
            ],
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
        // Hummingbird application: REST API, auth, wake-up scheduler, metrics.
        .target(
            name: "CloudAgentServer",
            dependencies: [
                "CloudAgentCore",
                "CloudAgentSQLite",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            resources: [.copy("Resources/openapi.yaml")],
            swiftSettings: strict
        ),
        // ArgumentParser commands: serve, tokens.
        .target(
            name: "CloudAgentCLI",
            dependencies: [
                "CloudAgentCore",
                "CloudAgentSQLite",
                "CloudAgentServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "cloud-agent",
            dependencies: ["CloudAgentCLI"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "CloudAgentCoreTests",
            dependencies: ["CloudAgentCore"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "CloudAgentStoreTests",
            dependencies: ["CloudAgentCore", "CloudAgentSQLite"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "CloudAgentServerTests",
            dependencies: [
                "CloudAgentCore",
                "CloudAgentSQLite",
                "CloudAgentServer",
                "CloudAgentCLI",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
    ],
    swiftLanguageModes: [.v6]
)
