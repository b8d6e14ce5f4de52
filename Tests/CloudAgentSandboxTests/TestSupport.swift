import CloudAgentTestSupport
import CloudAgentCore
@testable import CloudAgentSandbox
import Foundation
import Logging
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

struct ShellError: Error, CustomStringConvertible {
    var description: String
}

/// Runs a shell script for a test fixture (git repos, checks); throws with its output when it fails.
@discardableResult
func sh(_ script: String, in directory: URL, environment extra: [String: String] = [:]) async throws -> String {
    var environment = ProcessInfo.processInfo.environment
    environment.merge(extra) { _, new in new }
    let outcome = await CommandRunner.run(["/bin/sh", "-c", script], environment: environment, workingDirectory: directory, timeout: .seconds(60))
    let output = outcome.output.text(redacting: [])
    guard outcome.succeeded else {
        throw ShellError(description: "`\(script)` failed (\(outcome.exitCode)): \(output)")
    }
    return output.trimmingCharacters(in: .whitespacesAndNewlines)
}

let commit = "git -c user.name=t -c user.email=t@e commit --quiet"

/// A repository with `main` (a.txt) and `dev` (a.txt, b.txt), HEAD on main.
func makeRepository(in directory: TemporaryDirectory, name: String = "source") async throws -> URL {
    let repo = directory.path(name)
    try FileManager.default.createDirectory(at: repo, withIntermediateDirectories: true)
    try await sh(
        """
        git init --quiet --initial-branch=main . && echo a > a.txt && git add a.txt && \(commit) -m one && \
        git checkout --quiet -b dev && echo b > b.txt && git add b.txt && \(commit) -m two && \
        git checkout --quiet main
        """, in: repo)
    return repo
}

func contents(_ url: URL) -> String {
    (try? String(contentsOf: url, encoding: .utf8)) ?? ""
}

func exists(_ url: URL) -> Bool {
    FileManager.default.fileExists(atPath: url.path)
}

/// A data directory with a layout, a sandbox and a workspace manager whose logs are captured.
struct Fixture {
    let directory: TemporaryDirectory
    let layout: WorkspaceLayout
    let logs = LogCapture(label: "cloud-agent-sandbox-test")
    let workspaces: GitWorkspaces

    init(sandbox kind: SandboxKind = .none) throws {
        directory = try TemporaryDirectory()
        let data = directory.path("data")
        try FileManager.default.createDirectory(at: data, withIntermediateDirectories: true)
        layout = WorkspaceLayout(dataDirectory: data)
        workspaces = GitWorkspaces(
            layout: layout, sandbox: SandboxWrapper(kind: kind, dataDirectory: data), logger: logs.logger
        )
    }

    func request(
        _ id: SessionID = SessionID(), repo: RepoSource? = nil, workBranch: String? = nil,
        environment: [String: String] = [:], secrets: [String] = [], setup: [String] = [], timeoutMs: Int64 = 120_000
    ) -> WorkspaceRequest {
        WorkspaceRequest(
            sessionId: id, repo: repo, workBranch: workBranch ?? "session/\(id)", environment: environment,
            secretValues: secrets, setupCommands: setup, setupTimeoutMs: timeoutMs
        )
    }

    func git(_ arguments: String, _ id: SessionID) async throws -> String {
        try await sh("git \(arguments)", in: layout.workspace(id))
    }
}

/// A TCP socket listening on 127.0.0.1 on a free port.
struct LoopbackListener {
    let descriptor: Int32
    let port: UInt16

    init() throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(descriptor, 8) == 0 else {
            _ = Glibc.close(descriptor)
            throw ShellError(description: "cannot listen on 127.0.0.1")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        self.descriptor = descriptor
        self.port = UInt16(bigEndian: address.sin_port)
    }

    func close() { _ = Glibc.close(descriptor) }

    /// Whether anything has connected (a connection waits in the backlog until accepted).
    func hadConnection() -> Bool {
        var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        return poll(&poller, 1, 0) > 0
    }
}
