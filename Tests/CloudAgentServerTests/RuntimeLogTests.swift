@testable import CloudAgentCLI
import CloudAgentCore
import CloudAgentServer
import CloudAgentTestSupport
import Foundation
import HTTPTypes
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The runtime log through the real server and real runtimes under the sandbox `auto` picks.
@Suite("Runtime logs", .processes)
struct RuntimeLogTests {
    @Test(
        "GET …/logs: the runtime's own lines (connected, the agent started, the end), secrets masked, after the runtime stopped too; bad tail is 400; another user's is 404"
    )
    func logsOfASession() async throws {
        let server = try TestServer(timing: Timing(idleTimeoutMs: 1500, heartbeatIntervalMs: 200, staleThresholdMs: 5000, stopGraceMs: 1000))
        try await server.run { api in
            let secret = "s3cret-value-that-must-not-show"
            let id = try await api.createSession(["prompt": "say hi", "secrets": ["API_TOKEN": .string(secret)]])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            _ = try await api.waitForExecution(id, status: "completed", within: 30)
            _ = try await api.waitForRuntime(id, state: "stopped", within: 30)
            let logs = try await api.request(.get, "/v1/sessions/\(id)/logs")
            #expect(logs.status == 200)
            #expect(logs.text.contains("connected"), "\(logs.text)")
            #expect(logs.text.contains("starting the agent"))
            // Neither the session's secrets nor its variables' names.
            #expect(!logs.text.contains("API_TOKEN"))
            #expect(logs.text.contains("execution ended"))
            #expect(logs.text.contains("runtime stopped"))
            #expect(!logs.text.contains(secret))
            // A line holding a secret (a runtime that printed one) is served masked.
            let file = api.plane.configuration.dataDirectory.appendingPathComponent("runtimes/\(id.rawValue).log")
            let handle = try FileHandle(forWritingTo: file)
            try handle.seekToEnd()
            try handle.write(contentsOf: Data("leaked \(secret) here\n".utf8))
            try handle.close()
            let masked = try await api.request(.get, "/v1/sessions/\(id)/logs?tail=1")
            #expect(masked.text == "leaked *** here\n", "\(masked.text)")
            #expect(try await api.request(.get, "/v1/sessions/\(id)/logs?tail=0")["error"]?["field"] == "tail")
            #expect(try await api.request(.get, "/v1/sessions/\(id)/logs?tail=10001").status == 400)
            #expect(try await api.request(.get, "/v1/sessions/\(id)/logs", token: "nobody").status == 401)
            let bobToken = "bob-logs-token-0123456789"
            try await api.plane.store.saveToken(hash: BearerToken.hash(bobToken), owner: Owner(user: "bob"), createdAt: Date())
            #expect(try await api.request(.get, "/v1/sessions/\(id)/logs", token: bobToken).status == 404)
        }
    }

    @Test("the log outlives a restart of serve (kill -9), and the CLI prints it")
    func logsAfterARestart() async throws {
        let serve = try await ServeUnderTest(store: .sqlite)
        defer { serve.tearDown(part: "logs-restart") }
        try await serve.start()
        let id = try await serve.initiate("say before the restart")
        _ = try await serve.waitForEnd(id)
        try await serve.stop(with: SIGKILL)
        try await serve.start()
        try await eventually(within: 30, "the runtime to reconnect") {
            try await serve.request("GET", "/v1/sessions/\(id)/logs?tail=500").text.components(separatedBy: "connected").count >= 3
        }
        let cli = try SpawnedCommand(
            ["logs", id, "--tail", "5"],
            environment: ["CLOUD_AGENT_URL": "http://127.0.0.1:\(serve.port)", "CLOUD_AGENT_TOKEN": ServeUnderTest.token], in: serve.directory.url)
        defer { cli.forceStop() }
        try #require(try await cli.waitForExit(within: 30), "\(cli.diagnostics)")
        #expect(cli.stdout.split(separator: "\n").count == 5, "\(cli.stdout)")
    }
}

/// `cloud-agent logs -f`: what is new between two windows of the log's last lines.
@Suite("cloud-agent logs -f: new lines")
struct LogsFollowTests {
    @Test("lines after the overlap of two windows; none when nothing changed; all when the windows do not overlap")
    func newLines() {
        #expect(LogsCommand.newLines(shown: "a\nb\nc\n", latest: "b\nc\nd\ne\n") == "d\ne\n")
        #expect(LogsCommand.newLines(shown: "a\nb\n", latest: "a\nb\n") == "")
        #expect(LogsCommand.newLines(shown: "", latest: "x\n") == "x\n")
        #expect(LogsCommand.newLines(shown: "a\nb\n", latest: "y\nz\n") == "y\nz\n")
    }
}
