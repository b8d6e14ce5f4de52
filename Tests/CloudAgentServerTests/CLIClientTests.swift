import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HummingbirdTesting
import Testing

/// Runs the real `cloud-agent` client binary against a test server on a real socket.
struct CLIRunner {
    var port: Int
    let directory: URL
    var token = TestServer.localToken

    var url: String { "http://127.0.0.1:\(port)" }

    /// Starts `cloud-agent COMMAND --url … --token … ARGUMENTS` (output in files).
    func start(_ command: [String], _ arguments: [String] = [], environment: [String: String] = ["NO_COLOR": "1"]) throws -> SpawnedCommand {
        try SpawnedCommand(command + ["--url", url, "--token", token] + arguments, environment: environment, in: directory)
    }

    /// Runs it to its exit (killed after `seconds`).
    func run(
        _ command: [String], _ arguments: [String] = [], environment: [String: String] = ["NO_COLOR": "1"], within seconds: Double = 60,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> SpawnedCommand {
        let spawned = try start(command, arguments, environment: environment)
        let exited = try await spawned.waitForExit(within: seconds, sourceLocation: sourceLocation)
        if !exited { spawned.forceStop() }
        return spawned
    }
}

/// Every stdout line of a `--json` command, decoded.
func jsonLines(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> [JSONValue] {
    text.split(separator: "\n").compactMap { line in
        let decoded = try? JSONDecoder().decode(JSONValue.self, from: Data(line.utf8))
        if decoded == nil { Issue.record("not a JSON line: \(line)", sourceLocation: sourceLocation) }
        return decoded
    }
}

@Suite("cloud-agent's client commands, as a real process against a real server", .serialized, .long)
struct CLIClientTests {
    static let timing = Timing(
        idleTimeoutMs: 30_000, heartbeatIntervalMs: 150, staleThresholdMs: 1200, pendingTimeoutMs: 10_000, stopGraceMs: 1000,
        stuckAfterMs: 60_000
    )

    static func runner(_ api: TestAPI, _ server: TestServer) throws -> CLIRunner {
        CLIRunner(port: try #require(api.client.port, "the live test client has a port"), directory: server.directory.url)
    }

    @Test("run --json: create + initiate + stream to the end, exit 0, one JSON event per line, ids rising by one, over the WebSocket")
    func runJSON() async throws {
        let server = try TestServer(timing: Self.timing)
        try await server.run { api in
            let cli = try Self.runner(api, server)
            let run = try await cli.run(["run"], ["--json", "say hi\nrun echo x"])
            defer { run.forceStop() }
            #expect(run.exitedNormally && run.exitStatus == 0, "\(run.diagnostics)")
            let events = jsonLines(run.stdout)
            try #require(!events.isEmpty, "\(run.diagnostics)")
            #expect(events.compactMap { $0["id"]?.intValue } == Array(1...Int64(events.count)), "ids rise by one from 1, no duplicate")
            #expect(events.contains { $0["type"] == "agent" && $0["data"]?["kind"] == "text" && $0["data"]?["text"] == "hi" })
            #expect(
                events.contains {
                    $0["data"]?["kind"] == "tool" && $0["data"]?["name"] == "run" && $0["data"]?["input"] == "echo x" && $0["data"]?["exitCode"] == 0
                })
            #expect(events.last?["type"] == "execution.completed")
            let sessionId = try #require(events.first?["sessionId"]?.stringValue)
            #expect(events.allSatisfy { $0["sessionId"]?.stringValue == sessionId })
            // The events came over the stream route, not the polling fallback.
            #expect(!run.stderr.contains("polling"), "the stream route was not used: \(run.stderr)")
            let stored = try await api.events(try #require(SessionID(rawValue: sessionId)))
            #expect(stored.map(\.id) == events.compactMap { $0["id"]?.intValue }, "every stored event, once")
        }
    }

    @Test("run exit codes: a failing execution exits 1 with its error on stderr; an interrupted one exits 130")
    func runExitCodes() async throws {
        let server = try TestServer(timing: Self.timing)
        try await server.run { api in
            let cli = try Self.runner(api, server)
            let failed = try await cli.run(["run"], ["say before\nexit 3\nsay never"])
            defer { failed.forceStop() }
            #expect(failed.exitedNormally && failed.exitStatus == 1, "\(failed.diagnostics)")
            #expect(failed.stderr.contains("failed"), "\(failed.diagnostics)")
            let lines = failed.stdout.split(separator: "\n")
            #expect(lines.contains("before") && !lines.contains("never"), "\(failed.diagnostics)")

            // Interrupted: 130.
            let long = try cli.start(["run"], ["say working\nsleep 30"])
            defer { long.forceStop() }
            try await eventually(within: 20, "the agent's first words") { long.stdout.contains("working") || !long.isRunning }
            let sessionLine = try #require(long.stdout.split(separator: "\n").first { $0.hasPrefix("● session ") }, "\(long.diagnostics)")
            let sessionId = try #require(sessionLine.split(separator: " ").dropFirst(2).first.map(String.init))
            let interrupt = try await cli.run(["interrupt"], [sessionId])
            #expect(interrupt.exitStatus == 0 && interrupt.stdout.contains("interrupted"), "\(interrupt.diagnostics)")
            try await long.waitForExit(within: 20)
            #expect(long.exitedNormally && long.exitStatus == 130, "\(long.diagnostics)")
            #expect(long.stderr.contains("interrupted"), "\(long.diagnostics)")
            let again = try await cli.run(["interrupt"], [sessionId])
            #expect(again.exitStatus == 0 && again.stdout.contains("nothing to interrupt"), "\(again.diagnostics)")
        }
    }

    @Test("send --wait exits 0; stream --from 0 --json --until-end prints every event once, ids rising by one, live to the end")
    func sendAndStream() async throws {
        let server = try TestServer(timing: Self.timing)
        try await server.run { api in
            let cli = try Self.runner(api, server)
            let first = try await cli.run(["run"], ["--json", "say first"])
            #expect(first.exitStatus == 0, "\(first.diagnostics)")
            let sessionId = try #require(jsonLines(first.stdout).first?["sessionId"]?.stringValue)

            let send = try await cli.run(["send"], [sessionId, "say again", "--wait"])
            #expect(send.exitedNormally && send.exitStatus == 0, "\(send.diagnostics)")
            #expect(send.stdout.contains("again") && send.stdout.contains("execution completed"), "\(send.diagnostics)")
            #expect(!send.stdout.contains("first"), "send --wait shows only its own execution: \(send.stdout)")

            let failing = try await cli.run(["send"], [sessionId, "exit 4", "--wait", "--json"])
            #expect(failing.exitStatus == 1, "\(failing.diagnostics)")
            #expect(jsonLines(failing.stdout).last?["type"] == "execution.failed")

            // A follow-up without --wait, and a stream started while it runs: replay, then live, to its end.
            let started = try await cli.run(["send"], [sessionId, "say live\nsleep 1.5\nsay after the silence", "--json"])
            #expect(started.exitStatus == 0, "\(started.diagnostics)")
            let executionId = try #require(jsonLines(started.stdout).first?["executionId"]?.stringValue, "\(started.diagnostics)")
            let stream = try await cli.run(["stream"], [sessionId, "--from", "0", "--json", "--until-end"], within: 30)
            defer { stream.forceStop() }
            #expect(stream.exitedNormally && stream.exitStatus == 0, "\(stream.diagnostics)")
            let events = jsonLines(stream.stdout)
            #expect(events.compactMap { $0["id"]?.intValue } == Array(1...Int64(events.count)), "every event once, ids rising by one")
            #expect(events.last?["type"] == "execution.completed" && events.last?["executionId"]?.stringValue == executionId)
            #expect(events.contains { $0["data"]?["text"] == "after the silence" })
            let stored = try await api.events(try #require(SessionID(rawValue: sessionId)))
            #expect(events.count == stored.count, "the stream ended at the last event, the end of the latest execution")

            // Filters: one execution, some types; --until-end of an execution already over ends at once.
            let filtered = try await cli.run(["stream"], [sessionId, "--execution", executionId, "--types", "agent", "--json", "--until-end"], within: 30)
            #expect(filtered.exitStatus == 0, "\(filtered.diagnostics)")
            let agentEvents = jsonLines(filtered.stdout)
            #expect(agentEvents.map { $0["data"]?["text"]?.stringValue ?? "?" } == ["live", "after the silence"], "\(filtered.stdout)")
            let over = try await cli.run(["stream"], [sessionId, "--from", String(stored.last?.id ?? 0), "--until-end"], within: 30)
            #expect(over.exitStatus == 0 && over.stdout.isEmpty, "\(over.diagnostics)")

            // The REST commands.
            let list = try await cli.run(["sessions", "list"], ["--json"])
            #expect(list.exitStatus == 0, "\(list.diagnostics)")
            let listed = jsonLines(list.stdout)
            #expect(listed.count == 1)
            #expect(listed.first?["sessions"]?.arrayValue?.contains { $0["sessionId"]?.stringValue == sessionId } == true)
            let show = try await cli.run(["sessions", "show"], [sessionId, "--json"])
            #expect(show.exitStatus == 0 && jsonLines(show.stdout).first?["sessionId"]?.stringValue == sessionId, "\(show.diagnostics)")
            #expect(jsonLines(show.stdout).first?["executionCount"] == 4)
            let human = try await cli.run(["sessions", "show"], [sessionId])
            #expect(human.exitStatus == 0 && human.stdout.contains(sessionId) && human.stdout.contains("runtime"), "\(human.diagnostics)")
            let executions = try await cli.run(["executions"], [sessionId, "--json"])
            #expect(jsonLines(executions.stdout).first?["executions"]?.arrayValue?.count == 4, "\(executions.diagnostics)")
            let one = try await cli.run(["executions"], [sessionId, executionId])
            #expect(one.exitStatus == 0 && one.stdout.contains("completed") && one.stdout.contains("say live"), "\(one.diagnostics)")
            let page = try await cli.run(["events"], [sessionId, "--json", "--limit", "3", "--from", "2"])
            #expect(jsonLines(page.stdout).compactMap { $0["id"]?.intValue } == [3, 4, 5], "\(page.diagnostics)")

            // stream without --until-end follows until Ctrl-C: exit 130.
            let follow = try cli.start(["stream"], [sessionId, "--from", String(max(0, (stored.last?.id ?? 1) - 1))])
            defer { follow.forceStop() }
            try await eventually(within: 20, "the stream's replay") { !follow.stdout.isEmpty || !follow.isRunning }
            #expect(follow.isRunning, "stream stopped by itself: \(follow.diagnostics)")
            #expect(follow.stdout.hasPrefix("#\(stored.last?.id ?? 0) "), "ids shown: \(follow.stdout)")
            follow.signal(SIGINT)
            try await follow.waitForExit(within: 10)
            #expect(follow.exitStatus == 130, "\(follow.diagnostics)")
        }
    }

    @Test("human output: the agent's text, one line per tool call, lifecycle lines; no escape bytes when not a terminal")
    func humanOutput() async throws {
        let server = try TestServer(timing: Self.timing)
        try await server.run { api in
            let cli = try Self.runner(api, server)
            for environment in [["NO_COLOR": "1"], ["NO_COLOR": ""]] {
                let run = try await cli.run(["run"], ["say hi\nrun echo x\nwrite notes.txt hello"], environment: environment)
                #expect(run.exitStatus == 0, "\(run.diagnostics)")
                let output = run.stdout
                #expect(!output.utf8.contains(0x1B), "escape bytes in the output with \(environment): \(output)")
                let lines = output.split(separator: "\n").map(String.init)
                #expect(lines.contains("hi"), "\(output)")
                #expect(lines.contains { $0.hasPrefix("⏺ run: echo x → exit 0") }, "\(output)")
                #expect(lines.contains { $0.hasPrefix("⏺ write: notes.txt → ok") }, "\(output)")
                #expect(lines.contains { $0.hasPrefix("◇ runtime started") }, "\(output)")
                #expect(lines.contains { $0.hasPrefix("▶ execution exc_") }, "\(output)")
                #expect(lines.contains { $0.hasPrefix("✓ execution completed") }, "\(output)")
            }
        }
    }

    @Test("sessions create/patch/delete with every kind of option; API errors print the API's message and exit 2; no server exits 3")
    func sessionsAndErrors() async throws {
        let server = try TestServer(timing: Self.timing)
        let origin = try await makeGitRepository(in: server.directory)
        try await server.run { api in
            let cli = try Self.runner(api, server)
            let create = try await cli.run(
                ["sessions", "create"],
                [
                    "--json", "--repo", origin.path, "--env", "GREETING=hi", "--secret", "API_KEY=s3cr3t-value", "--setup", "echo set up",
                    "--idle-timeout", "45s", "--mode", "fast", "say hello",
                ])
            #expect(create.exitStatus == 0, "\(create.diagnostics)")
            let view = try #require(jsonLines(create.stdout).first)
            let sessionId = try #require(view["sessionId"]?.stringValue)
            #expect(view["envVarNames"] == ["GREETING"])
            #expect(view["secretNames"] == ["API_KEY"])
            #expect(view["setupCommands"] == ["echo set up"])
            #expect(view["idleTimeoutMs"] == 45_000)
            #expect(view["mode"] == "fast")
            #expect(view["repo"]?["url"]?.stringValue == origin.path)
            #expect(!create.stdout.contains("s3cr3t-value"))

            let patch = try await cli.run(["sessions", "patch"], [sessionId, "--idle-timeout", "2m", "--clear-mode", "--json"])
            #expect(patch.exitStatus == 0, "\(patch.diagnostics)")
            #expect(jsonLines(patch.stdout).first?["idleTimeoutMs"] == 120_000)
            #expect(jsonLines(patch.stdout).first?["mode"] == .null)
            let nothing = try await cli.run(["sessions", "patch"], [sessionId])
            #expect(nothing.exitStatus == 2 && nothing.stderr.contains("nothing to change"), "\(nothing.diagnostics)")
            let contradiction = try await cli.run(["sessions", "patch"], [sessionId, "--mode", "a", "--clear-mode"])
            #expect(contradiction.exitStatus == 2, "\(contradiction.diagnostics)")

            // The API's own refusals: its message and code on stderr, exit 2.
            let reserved = try await cli.run(["sessions", "create"], ["--env", "HOME=/x", "say hi"])
            #expect(reserved.exitStatus == 2, "\(reserved.diagnostics)")
            #expect(reserved.stderr.contains("INVALID_REQUEST") && reserved.stderr.contains("envVars.HOME"), "\(reserved.diagnostics)")
            let unknown = "agent_00000000-0000-0000-0000-000000000000"
            for command in [["sessions", "show"], ["send"], ["stream"], ["executions"], ["interrupt"]] {
                let arguments = command == ["send"] ? [unknown, "say hi", "--wait"] : [unknown]
                let missing = try await cli.run(command, arguments)
                #expect(missing.exitedNormally && missing.exitStatus == 2, "\(command): \(missing.diagnostics)")
                #expect(missing.stderr.contains("not found") && missing.stderr.contains("NOT_FOUND"), "\(command): \(missing.diagnostics)")
                #expect(missing.stdout.isEmpty, "\(command): \(missing.diagnostics)")
            }
            var stranger = cli
            stranger.token = "not-a-token"
            let unauthorized = try await stranger.run(["sessions", "list"])
            #expect(unauthorized.exitStatus == 2 && unauthorized.stderr.contains("UNAUTHORIZED"), "\(unauthorized.diagnostics)")

            let delete = try await cli.run(["sessions", "delete"], [sessionId])
            #expect(delete.exitStatus == 0 && delete.stdout.contains("deleted"), "\(delete.diagnostics)")
            let gone = try await cli.run(["sessions", "show"], [sessionId])
            #expect(gone.exitStatus == 2 && gone.stderr.contains("NOT_FOUND"), "\(gone.diagnostics)")

            // Usage errors exit 2; a server that is not there exits 3.
            let usage = try await cli.run(["sessions", "list"], ["--limit", "many"])
            #expect(usage.exitStatus == 2, "\(usage.diagnostics)")
            var nowhere = cli
            nowhere.port = 1
            let unreachable = try await nowhere.run(["sessions", "list"])
            #expect(unreachable.exitStatus == 3 && unreachable.stderr.contains("cannot reach"), "\(unreachable.diagnostics)")
        }
    }

    @Test("the token comes from CLOUD_AGENT_TOKEN, else from the data dir's api-token file; the URL from CLOUD_AGENT_URL")
    func tokenAndURLResolution() async throws {
        let server = try TestServer(timing: Self.timing)
        try await server.run { api in
            let cli = try Self.runner(api, server)
            let fromEnvironment = try SpawnedCommand(
                ["sessions", "list", "--json"],
                environment: ["CLOUD_AGENT_URL": cli.url, "CLOUD_AGENT_TOKEN": TestServer.localToken], in: server.directory.url
            )
            defer { fromEnvironment.forceStop() }
            try await fromEnvironment.waitForExit(within: 30)
            #expect(fromEnvironment.exitStatus == 0, "\(fromEnvironment.diagnostics)")

            let data = server.directory.url.appendingPathComponent("client-data")
            try FileManager.default.createDirectory(at: data, withIntermediateDirectories: true)
            try "\(TestServer.localToken)\n".write(to: data.appendingPathComponent("api-token"), atomically: true, encoding: .utf8)
            let fromFile = try SpawnedCommand(
                ["sessions", "list", "--json"], environment: ["CLOUD_AGENT_URL": cli.url, "CLOUD_AGENT_DATA_DIR": data.path], in: server.directory.url
            )
            defer { fromFile.forceStop() }
            try await fromFile.waitForExit(within: 30)
            #expect(fromFile.exitStatus == 0, "\(fromFile.diagnostics)")

            let none = try SpawnedCommand(["sessions", "list"], environment: ["CLOUD_AGENT_URL": cli.url], in: server.directory.url)
            defer { none.forceStop() }
            try await none.waitForExit(within: 30)
            #expect(none.exitStatus == 2 && none.stderr.contains("no API token"), "\(none.diagnostics)")
        }
    }
}
