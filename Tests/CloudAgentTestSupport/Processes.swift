import CloudAgentCore
import CloudAgentSandbox
import Foundation
import Subprocess
import SystemPackage
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A child process of a test whose stdin comes from a file (or is empty) and whose stdout and
/// stderr go to files: no pipe is read (Foundation's asynchronous pipe reading hangs on Linux).
/// Its exit is observed through Foundation's own reaper, never by a blocking wait on a task.
public final class TestProcess: @unchecked Sendable {
    public let process = Process()
    public let directory: URL
    public let stdoutURL: URL
    public let stderrURL: URL

    public init(
        _ executable: URL, arguments: [String], environment: [String: String], directory: URL, stdin: String? = nil,
        outputIn outputDirectory: URL
    ) throws {
        self.directory = directory
        let name = "process-\(UUID().uuidString.prefix(8))"
        stdoutURL = outputDirectory.appendingPathComponent("\(name).stdout")
        stderrURL = outputDirectory.appendingPathComponent("\(name).stderr")
        _ = FileManager.default.createFile(atPath: stdoutURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        process.executableURL = executable
        process.arguments = arguments
        process.environment = environment
        process.currentDirectoryURL = directory
        if let stdin {
            let stdinURL = outputDirectory.appendingPathComponent("\(name).stdin")
            try Data(stdin.utf8).write(to: stdinURL)
            process.standardInput = try FileHandle(forReadingFrom: stdinURL)
        } else {
            process.standardInput = FileHandle.nullDevice
        }
        process.standardOutput = try FileHandle(forWritingTo: stdoutURL)
        process.standardError = try FileHandle(forWritingTo: stderrURL)
        // The child inherits the spawning thread's signal mask, and test threads block most
        // signals: an agent then never sees its own children finish (Codex waits out a 10 s
        // yield per shell command). Spawn with nothing blocked, as swift-subprocess does.
        var nothing = sigset_t()
        var previous = sigset_t()
        sigemptyset(&nothing)
        pthread_sigmask(SIG_SETMASK, &nothing, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        try process.run()
    }

    public var stdout: String { (try? String(contentsOf: stdoutURL, encoding: .utf8)) ?? "" }
    public var stderr: String { (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? "" }
    public var isRunning: Bool { process.isRunning }
    public var pid: Int32 { process.processIdentifier }
    /// Valid once the process has exited.
    public var exitStatus: Int32 { process.terminationStatus }
    public var exitedNormally: Bool { process.terminationReason == .exit }

    /// The JSON objects among stdout's lines.
    public var jsonLines: [[String: JSONValue]] {
        stdout.split(separator: "\n").compactMap { line in
            (try? JSONDecoder().decode(JSONValue.self, from: Data(line.utf8)))?.objectValue
        }
    }

    public func waitForExit(within seconds: Double, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let name = process.executableURL?.lastPathComponent ?? "process"
        try await eventually(within: seconds, "\(name) (pid \(pid)) to exit", sourceLocation: sourceLocation) { !self.isRunning }
    }

    public func signal(_ number: Int32) {
        if process.isRunning { _ = kill(process.processIdentifier, number) }
    }

    /// Stops it and waits until it is gone, so that no process outlives its test: SIGTERM first
    /// when `grace` is above zero (SIGKILL if it lingers past it), else SIGKILL at once.
    public func terminate(grace: Duration = .zero) async {
        if grace > .zero {
            signal(SIGTERM)
            let deadline = ContinuousClock.now + grace
            while process.isRunning, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(10)) }
        }
        signal(SIGKILL)
        let deadline = ContinuousClock.now + .seconds(10)
        while process.isRunning, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(10)) }
    }
}

/// A shell command of a test (git and friends) failed.
public struct ShellFailure: Error, CustomStringConvertible {
    public var command: String
    public var status: String
    public var output: String
    public var description: String { "`\(command)` \(status): \(output)" }
}

/// Runs a shell command to completion and returns its combined stdout and stderr; throws
/// `ShellFailure` when it does not exit 0. The output goes to a file, not a pipe: a background
/// process the command leaves behind (a server, a runtime) must not hold the wait open. The
/// exit is awaited through swift-subprocess, never by a blocking wait on a task.
@discardableResult
public func shell(_ command: String, in directory: URL? = nil, environment extra: [String: String] = [:]) async throws -> String {
    var environment: [Environment.Key: String?] = [:]
    for (name, value) in extra {
        if let key = Environment.Key(rawValue: name) { environment[key] = value }
    }
    let outputURL = FileManager.default.temporaryDirectory.appendingPathComponent("cloud-agent-shell-\(UUID().uuidString).out")
    defer { try? FileManager.default.removeItem(at: outputURL) }
    let output = try FileDescriptor.open(
        FilePath(outputURL.path), .writeOnly, options: [.create, .truncate], permissions: [.ownerReadWrite]
    )
    let status: TerminationStatus
    do {
        status = try await Subprocess.run(
            .path("/bin/sh"), arguments: ["-c", "exec 2>&1\n" + command],
            environment: extra.isEmpty ? .inherit : .inherit.updating(environment),
            workingDirectory: directory.map { FilePath($0.path) },
            output: .fileDescriptor(output, closeAfterSpawningProcess: true)
        ).terminationStatus
    } catch {
        try? output.close()
        throw error
    }
    let text = (try? String(contentsOf: outputURL, encoding: .utf8)) ?? ""
    guard case .exited(0) = status else {
        throw ShellFailure(command: command, status: "ended \(status)", output: text)
    }
    return text
}

/// Whether bubblewrap works on this machine (installed, namespaces allowed): the bwrap-only tests
/// are skipped where it does not, since there is no sandbox to test. Probed once per process.
public func bwrapWorks() async -> Bool { await BwrapProbe.shared.value }

private enum BwrapProbe {
    static let shared = Task<Bool, Never> {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("cloud-agent-bwrap-probe-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        return (try? await SandboxWrapper.resolve("bwrap", dataDirectory: directory)) != nil
    }
}

/// The pids of the live processes of one session: those whose environment says
/// `SESSION_ID=<session>` (the runtime and everything it starts inherit it) and whose command
/// line contains `commandContaining`. Tests running in parallel start the same programs; a
/// process of another session is never counted. Zombies (no command line) are not live.
public func sessionProcesses(_ session: String, commandContaining needle: String) -> [Int32] {
    let marker = Array("SESSION_ID=\(session)".utf8)
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    return entries.compactMap { entry -> Int32? in
        guard let pid = Int32(entry),
            let environ = FileManager.default.contents(atPath: "/proc/\(entry)/environ"),
            let cmdline = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline"), !cmdline.isEmpty
        else { return nil }
        let variables = environ.split(separator: 0)
        guard variables.contains(where: { $0.elementsEqual(marker) }) else { return nil }
        let command = String(decoding: cmdline.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
        return command.contains(needle) ? pid : nil
    }
}
