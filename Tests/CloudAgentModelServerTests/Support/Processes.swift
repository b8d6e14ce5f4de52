import CloudAgentCore
import CloudAgentTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

enum PackageLayout {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()  // Support
        .deletingLastPathComponent()  // CloudAgentModelServerTests
        .deletingLastPathComponent()  // Tests
        .deletingLastPathComponent()  // package root

    /// `.build/debug/cloud-agent-model-server`, built with the tests (`swift build` builds it too).
    static func modelServerBinary() throws -> URL {
        let url = root.appendingPathComponent(".build/debug/cloud-agent-model-server")
        try #require(FileManager.default.isExecutableFile(atPath: url.path), "build the executable first (swift build): \(url.path)")
        return url
    }
}

/// The real agent CLIs: `CLOUD_AGENT_CLAUDE_BIN` / `CLOUD_AGENT_CODEX_BIN`, else `claude` / `codex`
/// on PATH.
enum AgentBinaries {
    static let claude = find(environment: "CLOUD_AGENT_CLAUDE_BIN", name: "claude")
    static let codex = find(environment: "CLOUD_AGENT_CODEX_BIN", name: "codex")

    static func find(environment variable: String, name: String) -> String? {
        let environment = ProcessInfo.processInfo.environment
        if let path = environment[variable], !path.isEmpty {
            return FileManager.default.isExecutableFile(atPath: path) ? path : nil
        }
        for directory in (environment["PATH"] ?? "").split(separator: ":") {
            let path = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }
}
