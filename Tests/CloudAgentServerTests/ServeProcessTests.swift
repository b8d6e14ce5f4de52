import AsyncHTTPClient
import CloudAgentTestSupport
import CloudAgentCore
import Foundation
import NIOCore
import NIOHTTP1
import Testing
#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif
#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The `cloud-agent` executable built by `swift build`: `$CLOUD_AGENT_BIN`, or
/// `<package root>/.build/debug/cloud-agent`.
private func cloudAgentBinary(filePath: String = #filePath) throws -> URL {
    if let configured = ProcessInfo.processInfo.environment["CLOUD_AGENT_BIN"], !configured.isEmpty {
        let url = URL(fileURLWithPath: configured)
        try #require(FileManager.default.isExecutableFile(atPath: url.path), "CLOUD_AGENT_BIN=\(configured) is not an executable")
        return url
    }
    let packageRoot = URL(fileURLWithPath: filePath)
        .deletingLastPathComponent()  // CloudAgentServerTests
        .deletingLastPathComponent()  // Tests
        .deletingLastPathComponent()  // package root
    let url = packageRoot.appendingPathComponent(".build/debug/cloud-agent")
    try #require(FileManager.default.isExecutableFile(atPath: url.path), "build the executable first (swift build): \(url.path)")
    return url
}

/// A spawned `cloud-agent` process whose stdout and stderr go to files (pipes are not read:
/// Foundation's asynchronous pipe reading hangs on Linux).
final class SpawnedCommand: @unchecked Sendable {
    let process = Process()
    let stdoutURL: URL
    let stderrURL: URL
    let arguments: [String]

    /// Starts `cloud-agent ARGUMENTS` with only the given CLOUD_AGENT_* variables (none is
    /// inherited from the test's environment), its output in `directory`.
    init(_ arguments: [String], environment: [String: String] = [:], in directory: URL) throws {
        self.arguments = arguments
        let name = "\(arguments.first ?? "run")-\(UUID().uuidString.prefix(8))"
        stdoutURL = directory.appendingPathComponent("\(name).stdout")
        stderrURL = directory.appendingPathComponent("\(name).stderr")
        _ = FileManager.default.createFile(atPath: stdoutURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        var inherited = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("CLOUD_AGENT_") }
        // Runtimes left behind by a control plane a test stopped (or killed) end themselves.
        inherited["CLOUD_AGENT_ORPHAN_LIMIT"] = TestServer.orphanLimit
        inherited.merge(environment) { _, new in new }
        process.executableURL = try cloudAgentBinary()
        process.arguments = arguments
        process.environment = inherited
        process.currentDirectoryURL = directory
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = try FileHandle(forWritingTo: stdoutURL)
        process.standardError = try FileHandle(forWritingTo: stderrURL)
        try process.run()
    }

    var stdout: String { (try? String(contentsOf: stdoutURL, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? "" }
    var isRunning: Bool { process.isRunning }
    var pid: Int32 { process.processIdentifier }
    /// Valid once the process has exited.
    var exitStatus: Int32 { process.terminationStatus }
    var exitedNormally: Bool { process.terminationReason == .exit }

    /// Waits (without blocking a thread) for the process to exit; false on timeout.
    @discardableResult
    /// Whether it exited within `seconds`; a timeout is an error that carries its output. A graceful
    /// shutdown takes about 2 s here; the bound is wide for a machine running the whole suite.
    func waitForExit(within seconds: Double, sourceLocation: SourceLocation = #_sourceLocation) async throws -> Bool {
        do {
            try await eventually(within: seconds, "cloud-agent \(arguments.joined(separator: " ")) to exit", sourceLocation: sourceLocation) {
                !self.isRunning
            }
        } catch {
            throw TestFailure("\(error)\n\(diagnostics)")
        }
        return !isRunning
    }

    func signal(_ number: Int32) {
        if process.isRunning { _ = kill(process.processIdentifier, number) }
    }

    /// SIGKILL if still running: no process outlives its test (Foundation's reaper collects it;
    /// nothing here blocks a thread waiting for that).
    func forceStop() {
        guard process.isRunning else { return }
        _ = kill(process.processIdentifier, SIGKILL)
    }

    var diagnostics: String { "stdout:\n\(stdout)\nstderr:\n\(stderr)" }
}

/// A `cloud-agent serve` that printed its banner.
struct RunningServer {
    let command: SpawnedCommand
    let port: Int
    let token: String
    var baseURL: URL { URL(string: "http://127.0.0.1:\(port)")! }

    /// Waits for the banner (the first start may be slow) and reads the port and the printed token.
    static func awaitBanner(_ command: SpawnedCommand, within seconds: Double = 60) async throws -> RunningServer {
        try await eventually(within: seconds, "the listening banner") {
            command.stdout.contains("cloud-agent listening on http://127.0.0.1:") && command.stdout.contains("API token for user local")
                || !command.isRunning
        }
        let output = command.stdout
        try #require(command.isRunning, "serve exited early (\(command.exitStatus)):\n\(command.diagnostics)")
        let lines = output.split(separator: "\n").map(String.init)
        let listening = try #require(lines.first { $0.hasPrefix("cloud-agent listening on http://127.0.0.1:") }, "\(output)")
        let port = try #require(Int(listening.dropFirst("cloud-agent listening on http://127.0.0.1:".count)), "\(listening)")
        #expect(port > 0, "port 0 picks a free port")
        let tokenLine = try #require(lines.first { $0.hasPrefix("API token for user local") }, "\(output)")
        let token = try #require(tokenLine.components(separatedBy: ": ").last?.trimmingCharacters(in: .whitespaces))
        try #require(!token.isEmpty)
        return RunningServer(command: command, port: port, token: token)
    }
}

/// HTTP to a spawned server, over AsyncHTTPClient's shared client (SwiftNIO). Not URLSession:
/// FoundationNetworking on Linux deadlocked when a request was cancelled while its transfer
/// completed, and a parallel run hung with every test that used it waiting and every thread
/// idle (docs/testing.md).
struct HTTPClient {
    let baseURL: URL

    func request(_ method: String, _ path: String, token: String? = nil, json: JSONValue? = nil) async throws -> APIResponse {
        var request = HTTPClientRequest(url: baseURL.absoluteString + (path.hasPrefix("/") ? path : "/" + path))
        request.method = .init(rawValue: method)
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let json {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try JSONEncoder().encode(json)))
        }
        let response = try await AsyncHTTPClient.HTTPClient.shared.execute(request, timeout: .seconds(30))
        let body = try await response.body.collect(upTo: 256 * 1024 * 1024)
        let data = Data(body.readableBytesView)
        let status = Int(response.status.code)
        let text = String(decoding: data, as: UTF8.self)
        let decoded = text.isEmpty ? JSONValue.null : ((try? JSONDecoder().decode(JSONValue.self, from: data)) ?? .null)
        return APIResponse(status: status, json: decoded, text: text)
    }
}

private func posixPermissions(_ url: URL) throws -> Int {
    let attributes = try FileManager.default.attributesOfItem(atPath: url.path)
    if let number = attributes[.posixPermissions] as? NSNumber { return number.intValue & 0o777 }
    return try #require(attributes[.posixPermissions] as? Int) & 0o777
}

@Suite("cloud-agent as a real process: serve configured by the environment, tokens, restart, start-up errors", .processes)
struct ServeProcessTests {
    @Test("serve configured only by environment variables: token file, auth, tenant isolation, SIGTERM, restart")
    func serveFromEnvironment() async throws {
        let directory = try TemporaryDirectory()
        defer { withExtendedLifetime(directory) {} }  // outlives every spawned process
        let data = directory.url.appendingPathComponent("data")
        let environment = ["CLOUD_AGENT_PORT": "0", "CLOUD_AGENT_DATA_DIR": data.path, "CLOUD_AGENT_LOG_LEVEL": "debug"]

        // First start.
        let first = try SpawnedCommand(["serve"], environment: environment, in: directory.url)
        defer { first.forceStop() }
        let server = try await RunningServer.awaitBanner(first)
        let tokenFile = data.appendingPathComponent("api-token")
        let keyFile = data.appendingPathComponent("secret.key")
        try #require(FileManager.default.fileExists(atPath: tokenFile.path), "no \(tokenFile.path)")
        #expect(try posixPermissions(tokenFile) == 0o600)
        #expect(FileManager.default.fileExists(atPath: keyFile.path))
        #expect(try posixPermissions(keyFile) == 0o600)
        let savedToken = try String(contentsOf: tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(server.token == savedToken)
        #expect(first.stdout.contains(tokenFile.path), "the banner says where the token is saved")
        // CLOUD_AGENT_LOG_LEVEL=debug is honoured: debug lines are logged, to stderr and not to stdout.
        #expect(first.stderr.contains(" debug "), "\(first.diagnostics)")
        #expect(!first.stdout.contains(" debug "), "\(first.diagnostics)")

        let http = HTTPClient(baseURL: server.baseURL)
        #expect(try await http.request("GET", "healthz").status == 200)
        #expect(try await http.request("GET", "v1/sessions").status == 401)
        let created = try await http.request("POST", "v1/sessions", token: server.token, json: ["prompt": "say hello"])
        try #require(created.status == 201, "\(created.text)")
        let sessionId = try #require(created["sessionId"]?.stringValue)
        #expect(try await http.request("GET", "v1/sessions/\(sessionId)", token: server.token).status == 200)

        // A second user, created by the CLI against the same data directory while serve runs.
        let tokens = try SpawnedCommand(["tokens", "create", "--user", "bob", "--org", "acme", "--data-dir", data.path], in: directory.url)
        defer { tokens.forceStop() }
        try #require(try await tokens.waitForExit(within: 30), "\(tokens.diagnostics)")
        try #require(tokens.exitedNormally && tokens.exitStatus == 0, "tokens create failed (\(tokens.exitStatus)):\n\(tokens.diagnostics)")
        let bobToken = try #require(
            tokens.stdout.split(separator: "\n").last.map { $0.trimmingCharacters(in: .whitespaces) }, "\(tokens.diagnostics)"
        )
        try #require(!bobToken.isEmpty && bobToken != server.token)
        #expect(!tokens.stdout.contains(server.token))

        let bobList = try await http.request("GET", "v1/sessions", token: bobToken)
        #expect(bobList.status == 200, "\(bobList.text)")
        #expect(bobList["sessions"]?.arrayValue?.isEmpty == true, "bob sees another user's sessions: \(bobList.text)")
        let bobGet = try await http.request("GET", "v1/sessions/\(sessionId)", token: bobToken)
        #expect(bobGet.status == 404, "\(bobGet.text)")
        #expect(bobGet.errorCode == "NOT_FOUND")
        let localList = try await http.request("GET", "v1/sessions", token: server.token)
        #expect(localList["sessions"]?.arrayValue?.count == 1)

        // SIGTERM: a graceful shutdown, exit status 0.
        first.signal(SIGTERM)
        try #require(try await first.waitForExit(within: 45), "\(first.diagnostics)")
        #expect(first.exitedNormally, "serve was killed by a signal rather than exiting:\n\(first.diagnostics)")
        #expect(first.exitStatus == 0, "\(first.diagnostics)")

        // Restart on the same data directory: the token file is reused and the session is still there.
        let second = try SpawnedCommand(["serve"], environment: environment, in: directory.url)
        defer { second.forceStop() }
        let restarted = try await RunningServer.awaitBanner(second)
        #expect(restarted.token == server.token)
        #expect(try String(contentsOf: tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) == savedToken)
        let again = HTTPClient(baseURL: restarted.baseURL)
        let kept = try await again.request("GET", "v1/sessions/\(sessionId)", token: restarted.token)
        #expect(kept.status == 200, "\(kept.text)")
        #expect(kept["sessionId"]?.stringValue == sessionId)
        // Bob's token, stored hashed in the database, survives the restart too.
        #expect(try await again.request("GET", "v1/sessions", token: bobToken).status == 200)
        #expect(try await again.request("GET", "v1/sessions/\(sessionId)", token: bobToken).status == 404)
        // Runtimes outlive their control plane by design: deleting the session takes its runtime down.
        #expect(try await again.request("DELETE", "v1/sessions/\(sessionId)", token: restarted.token).status == 204)

        second.signal(SIGTERM)
        try await second.waitForExit(within: 45)
        #expect(second.exitStatus == 0, "\(second.diagnostics)")
    }

    @Test("a bad flag is a clear start-up error naming the flag", arguments: ["--idle-timeout", "--orphan-limit"])
    func badFlagStops(_ flag: String) async throws {
        let directory = try TemporaryDirectory()
        defer { withExtendedLifetime(directory) {} }  // outlives every spawned process
        let serve = try SpawnedCommand(
            ["serve", flag, "10", "--data-dir", directory.url.appendingPathComponent("data").path],
            environment: ["CLOUD_AGENT_PORT": "0"], in: directory.url
        )
        defer { serve.forceStop() }
        try #require(try await serve.waitForExit(within: 45), "\(serve.diagnostics)")
        #expect(serve.exitedNormally && serve.exitStatus != 0, "\(serve.diagnostics)")
        #expect(serve.stderr.contains(flag), "\(serve.diagnostics)")
        #expect(serve.stderr.contains("\"10\""), "the message quotes the bad value: \(serve.diagnostics)")
        #expect(!serve.stdout.contains("listening"), "\(serve.diagnostics)")
    }

    @Test("a bad environment variable is a clear start-up error naming the variable")
    func badEnvironmentStops() async throws {
        let directory = try TemporaryDirectory()
        defer { withExtendedLifetime(directory) {} }  // outlives every spawned process
        let serve = try SpawnedCommand(
            ["serve", "--data-dir", directory.url.appendingPathComponent("data").path],
            environment: ["CLOUD_AGENT_PORT": "0", "CLOUD_AGENT_SANDBOX": "docker"], in: directory.url
        )
        defer { serve.forceStop() }
        try #require(try await serve.waitForExit(within: 45), "\(serve.diagnostics)")
        #expect(serve.exitedNormally && serve.exitStatus != 0, "\(serve.diagnostics)")
        #expect(serve.stderr.contains("CLOUD_AGENT_SANDBOX"), "\(serve.diagnostics)")
        #expect(serve.stderr.contains("docker"), "\(serve.diagnostics)")
        #expect(!serve.stdout.contains("listening"), "\(serve.diagnostics)")
    }
}
