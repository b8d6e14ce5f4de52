import CloudAgentCore
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

/// A fresh directory under the system's temporary directory, resolved (no symlinks).
func makeTemporaryDirectory(_ prefix: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url.resolvingSymlinksInPath()
}

/// Polls `condition` until it holds; records an issue and throws after `seconds`.
func eventually(
    within seconds: Double,
    _ what: String,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    if try await condition() { return }
    Issue.record("timed out after \(seconds) s waiting for \(what)", sourceLocation: sourceLocation)
    throw WaitTimeout()
}

struct WaitTimeout: Error {}

/// A child process whose stdout and stderr go to files (no pipes are read: Foundation's
/// asynchronous pipe reading hangs on Linux) and whose stdin is empty.
final class TestProcess: @unchecked Sendable {
    let process = Process()
    let stdoutURL: URL
    let stderrURL: URL

    init(_ executable: URL, arguments: [String], environment: [String: String], directory: URL, outputIn outputDirectory: URL) throws {
        let name = "process-\(UUID().uuidString.prefix(8))"
        stdoutURL = outputDirectory.appendingPathComponent("\(name).stdout")
        stderrURL = outputDirectory.appendingPathComponent("\(name).stderr")
        _ = FileManager.default.createFile(atPath: stdoutURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        process.executableURL = executable
        process.arguments = arguments
        process.environment = environment
        process.currentDirectoryURL = directory
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = try FileHandle(forWritingTo: stdoutURL)
        process.standardError = try FileHandle(forWritingTo: stderrURL)
        // The child inherits the spawning thread's signal mask, and test threads block most
        // signals: Codex then never sees its shell commands finish (each waits out its 10 s
        // yield). Spawn with nothing blocked, as swift-subprocess does.
        var nothing = sigset_t()
        var previous = sigset_t()
        sigemptyset(&nothing)
        pthread_sigmask(SIG_SETMASK, &nothing, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        try process.run()
    }

    var stdout: String { (try? String(contentsOf: stdoutURL, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? "" }
    var isRunning: Bool { process.isRunning }
    /// Valid once the process has exited.
    var exitStatus: Int32 { process.terminationStatus }

    /// The JSON objects among stdout's lines.
    var jsonLines: [[String: JSONValue]] {
        stdout.split(separator: "\n").compactMap { line in
            (try? JSONDecoder().decode(JSONValue.self, from: Data(line.utf8)))?.objectValue
        }
    }

    func waitForExit(within seconds: Double, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        try await eventually(within: seconds, "\(process.executableURL?.lastPathComponent ?? "process") to exit", sourceLocation: sourceLocation) {
            !self.isRunning
        }
    }

    /// SIGTERM, then SIGKILL if it lingers; waits for it: no process outlives its test.
    func terminate() async {
        if process.isRunning { _ = kill(process.processIdentifier, SIGTERM) }
        let deadline = ContinuousClock.now + .seconds(5)
        while process.isRunning, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(10)) }
        if process.isRunning { _ = kill(process.processIdentifier, SIGKILL) }
        while process.isRunning { try? await Task.sleep(for: .milliseconds(10)) }
    }
}
