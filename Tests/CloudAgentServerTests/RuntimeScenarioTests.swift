import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentSandbox
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HTTPTypes
import Testing

/// The heart of the product through the real server, real runtime processes and real git repos,
/// with durations compressed to seconds.
@Suite("Runtimes, executions and idle cleanup, end to end", .processes)
struct RuntimeScenarioTests {
    static let timing = Timing(
        idleTimeoutMs: 2000, heartbeatIntervalMs: 150, staleThresholdMs: 1200, pendingTimeoutMs: 10_000, stopGraceMs: 1500,
        stuckAfterMs: 60_000
    )

    @Test("the seed's bug: a silent execution twice the idle timeout completes; its runtime stops only after completedAt + idle")
    func silentExecutionIsNeverStopped() async throws {
        let server = try TestServer(timing: Self.timing)
        let origin = try await makeGitRepository(in: server.directory)
        try await server.run { api in
            let id = try await api.createSession(["prompt": "say start\nsleep 4\nsay done", "repo": ["url": .string(origin.path)]])
            try await api.waitForRuntime(id, state: "running")
            let started = try await api.request(.post, "/v1/sessions/\(id)/initiate")
            #expect(started.status == 202)
            #expect(started["status"] == "started")
            let executionId = try #require(started["executionId"]?.stringValue)
            // All through the silent stretch, the runtime keeps running.
            var completed: JSONValue?
            let deadline = ContinuousClock.now + .seconds(20)
            while ContinuousClock.now < deadline {
                let session = try await api.request(.get, "/v1/sessions/\(id)")
                let status = session["latestExecution"]?["status"]?.stringValue
                if status == "completed" { completed = session["latestExecution"]; break }
                #expect(session["runtime"]?["state"] == "running", "runtime not running while the execution is \(status ?? "?")")
                #expect(session["activity"]?["idleDeadline"] == .null)
                try await Task.sleep(for: .milliseconds(100))
            }
            let execution = try #require(completed, "the execution never completed")
            #expect(execution["executionId"]?.stringValue == executionId)
            let completedAt = try #require(execution["completedAt"]?.stringValue.flatMap(Timestamp.parse))
            let stopped = try await api.waitForRuntime(id, state: "stopped", within: 10)
            let reason = try #require(stopped["runtime"]?["stopReason"])
            #expect(reason["rule"] == "idle")
            #expect(reason["idleTimeoutMs"] == 2000)
            #expect(reason["lastActivityAt"]?.stringValue.flatMap(Timestamp.parse) == completedAt)
            let stoppedAt = try #require(stopped["runtime"]?["stoppedAt"]?.stringValue.flatMap(Timestamp.parse))
            let lag = stoppedAt.timeIntervalSince(completedAt.addingTimeInterval(2))
            #expect(lag >= 0 && lag < 1.0, "stopped \(lag) s after completedAt + idle")
            let events = try await api.events(id)
            #expect(events.map(\.type).contains("runtime.stopped"))
            #expect(events.filter { $0.type == "agent" }.compactMap { $0.data["text"]?.stringValue } == ["start", "done"])
        }
    }

    @Test("the revert's case: a prepared, never-initiated session is stopped at runtime start + idle")
    func preparedSessionIsReclaimed() async throws {
        try await TestServer(timing: Self.timing).run { api in
            let id = try await api.createSession()
            let running = try await api.waitForRuntime(id, state: "running")
            let startedAt = try #require(running["runtime"]?["startedAt"]?.stringValue.flatMap(Timestamp.parse))
            #expect(running["activity"]?["source"] == "runtimeStart")
            let stopped = try await api.waitForRuntime(id, state: "stopped", within: 10)
            let reason = try #require(stopped["runtime"]?["stopReason"])
            #expect(reason["rule"] == "idle")
            #expect(reason["lastActivityAt"]?.stringValue.flatMap(Timestamp.parse) == startedAt)
            let stoppedAt = try #require(stopped["runtime"]?["stoppedAt"]?.stringValue.flatMap(Timestamp.parse))
            let lag = stoppedAt.timeIntervalSince(startedAt.addingTimeInterval(2))
            #expect(lag >= 0 && lag < 1.0, "stopped \(lag) s after start + idle")
            #expect(stopped["initiatedAt"] == .null)
        }
    }

    @Test("a follow-up after the idle stop cold-starts the runtime and completes")
    func followUpColdStarts() async throws {
        let server = try TestServer(timing: Self.timing)
        let origin = try await makeGitRepository(in: server.directory)
        try await server.run { api in
            let id = try await api.createSession(["prompt": "write notes.txt first", "repo": ["url": .string(origin.path)]])
            try await api.waitForRuntime(id, state: "running")
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            try await api.waitForExecution(id, status: "completed")
            try await api.waitForRuntime(id, state: "stopped", within: 10)
            let follow = try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "run cat notes.txt"])
            #expect(follow.status == 202)
            let execution = try await api.waitForExecution(id, status: "completed", within: 20)
            #expect(execution["prompt"] == "run cat notes.txt")
            let events = try await api.events(id)
            let starts = events.filter { $0.type == "runtime.started" }
            #expect(starts.map { $0.data["cold"] } == [false, true])
            let tool = events.last { $0.type == "agent" && $0.data["kind"] == "tool" }
            #expect(tool?.data["output"]?.stringValue?.contains("first") == true, "the workspace survived the idle stop")
            #expect(try await api.request(.get, "/v1/sessions/\(id)")["executionCount"] == 2)
        }
    }

    @Test("409 while an execution is active; interrupt ends it (user); a follow-up then works")
    func conflictAndInterrupt() async throws {
        try await TestServer(timing: Self.timing).run { api in
            let id = try await api.createSession(["prompt": "say working\nsleep 30"])
            let started = try await api.request(.post, "/v1/sessions/\(id)/initiate")
            let executionId = try #require(started["executionId"]?.stringValue)
            let conflict = try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "say more"])
            #expect(conflict.status == 409)
            #expect(conflict.errorCode == "EXECUTION_IN_PROGRESS")
            #expect(conflict.json["error"]?["activeExecutionId"]?.stringValue == executionId)
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").errorCode == "INVALID_STATE")
            try await api.waitForExecution(id, status: "running")
            try await eventually(within: 10, "the agent's first event") { try await api.events(id).contains { $0.type == "agent" } }
            let interrupted = try await api.request(.post, "/v1/sessions/\(id)/interrupt")
            #expect(interrupted.status == 200)
            #expect(interrupted["interrupted"] == true)
            #expect(interrupted["executionId"]?.stringValue == executionId)
            let execution = try await api.waitForExecution(id, status: "interrupted")
            #expect(execution["interruptReason"] == "user")
            #expect(try await api.request(.post, "/v1/sessions/\(id)/interrupt").json == ["interrupted": false])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "say again"]).status == 202)
            let second = try await api.waitForExecution(id, status: "completed")
            #expect(second["prompt"] == "say again")
            #expect(try await api.request(.get, "/v1/sessions/\(id)/executions")["executions"]?.arrayValue?.count == 2)
        }
    }

    @Test("SIGKILL of the runtime's processes fails the execution (missing heartbeat or death) and the runtime is crashed")
    func runtimeKilled() async throws {
        try await TestServer(timing: Self.timing).run { api in
            let id = try await api.createSession(["prompt": "sleep 30"])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            try await api.waitForExecution(id, status: "running")
            let killedAt = Date()
            try await api.killRuntime(id)
            let execution = try await api.waitForExecution(id, status: "failed", within: 5)
            let failedAt = try #require(execution["completedAt"]?.stringValue.flatMap(Timestamp.parse))
            #expect(failedAt.timeIntervalSince(killedAt) < 1.2 + 1.0)
            let error = execution["error"]?.stringValue ?? ""
            #expect(error.contains("heartbeat") || error.contains("runtime died"), "error: \(error)")
            let session = try await api.waitForRuntime(id, state: "stopped")
            #expect(session["runtime"]?["stopReason"]?["rule"] == "crashed")
            // The next message cold-starts a new runtime.
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "say back"]).status == 202)
            try await api.waitForExecution(id, status: "completed", within: 20)
        }
    }

    @Test("SIGTERM of the runtime interrupts the execution with a reason naming SIGTERM")
    func runtimeTerminated() async throws {
        try await TestServer(timing: Self.timing).run { api in
            let id = try await api.createSession(["prompt": "say hi\nsleep 30"])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            try await api.waitForExecution(id, status: "running")
            let process = try await api.runtimeItself(id)
            kill(process.pid, SIGTERM)
            let execution = try await api.waitForExecution(id, status: "interrupted", within: 5)
            #expect(execution["interruptReason"]?.stringValue?.contains("SIGTERM") == true)
            try await api.waitForRuntime(id, state: "stopped")
        }
    }

    @Test("changing idleTimeoutMs applies at once; a stopped runtime is never probed again")
    func idleTimeoutChangeMovesTheDeadline() async throws {
        let timing = Timing(idleTimeoutMs: 60_000, heartbeatIntervalMs: 150, staleThresholdMs: 1200, stopGraceMs: 1500)
        try await TestServer(timing: timing).run { api in
            let id = try await api.createSession()
            let running = try await api.waitForRuntime(id, state: "running")
            let startedAt = try #require(running["runtime"]?["startedAt"]?.stringValue.flatMap(Timestamp.parse))
            #expect(
                running["activity"]?["idleDeadline"]?.stringValue.flatMap(Timestamp.parse)?.millisecondsSince1970
                    == startedAt.adding(milliseconds: 60_000).millisecondsSince1970)
            let patched = try await api.request(.patch, "/v1/sessions/\(id)", json: ["idleTimeoutMs": 800])
            #expect(
                patched["activity"]?["idleDeadline"]?.stringValue.flatMap(Timestamp.parse)?.millisecondsSince1970
                    == startedAt.adding(milliseconds: 800).millisecondsSince1970)
            let stopped = try await api.waitForRuntime(id, state: "stopped", within: 5)
            #expect(stopped["runtime"]?["stopReason"]?["idleTimeoutMs"] == 800)
            try await Task.sleep(for: .milliseconds(500))
            #expect(try await api.events(id).filter { $0.type == "runtime.stopped" }.count == 1)
        }
    }

    @Test("at capacity the least recently active idle runtime is evicted; when all are busy, 503")
    func capacity() async throws {
        var server = try TestServer(timing: Timing(idleTimeoutMs: 60_000, heartbeatIntervalMs: 150, staleThresholdMs: 1200, stopGraceMs: 1500))
        server.maxRuntimes = 2
        try await server.run { api in
            let older = try await api.createSession()
            try await api.waitForRuntime(older, state: "running")
            // Their executions keep them busy for the rest of the test, however loaded the machine.
            let newer = try await api.createSession(["prompt": "sleep 30"])
            try await api.waitForRuntime(newer, state: "running")
            let third = try await api.createSession(["prompt": "sleep 30"])
            let evicted = try await api.waitForRuntime(older, state: "stopped", within: 5)
            #expect(evicted["runtime"]?["stopReason"]?["rule"] == "evicted")
            #expect(try await api.request(.get, "/v1/sessions/\(newer)")["runtime"]?["state"] == "running")
            try await api.waitForRuntime(third, state: "running")
            // Both runtimes busy: no slot for a fourth.
            for id in [newer, third] {
                var session = try #require(try await api.plane.store.session(id))
                #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
                session = try #require(try await api.plane.store.session(id))
                #expect(session.activeExecutionId != nil)
            }
            let refused = try await api.request(.post, "/v1/sessions", json: ["prompt": "no room"])
            #expect(refused.status == 503)
            #expect(refused.errorCode == "RUNTIME_UNAVAILABLE")
            #expect(refused.json["error"]?["retryable"] == true)
            #expect(try await api.request(.get, "/v1/sessions")["sessions"]?.arrayValue?.count == 3)
        }
    }

    @Test("events: ids rise by one from 1 with no gaps; filters by execution and type")
    func eventsRoute() async throws {
        try await TestServer(timing: Self.timing).run { api in
            let id = try await api.createSession(["prompt": "tick 5 0.02\nrun echo hi\nsay bye"])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let execution = try await api.waitForExecution(id, status: "completed")
            let executionId = try #require(execution["executionId"]?.stringValue)
            let events = try await api.events(id)
            #expect(events.map(\.id) == Array(1...Int64(events.count)))
            #expect(execution["progress"]?["events"] == JSONValue(Int64(events.filter { $0.type == "agent" }.count)))
            let agentOnly = try await api.request(.get, "/v1/sessions/\(id)/events?types=agent&executionId=\(executionId)&limit=3")
            let page = agentOnly["events"]?.arrayValue ?? []
            #expect(page.count == 3 && page.allSatisfy { $0["type"] == "agent" })
            let next = try #require(agentOnly["nextFromId"]?.intValue)
            let rest = try await api.request(.get, "/v1/sessions/\(id)/events?types=agent&fromId=\(next)")
            #expect((rest["events"]?.arrayValue?.count ?? 0) + 3 == events.filter { $0.type == "agent" }.count)
            let tool = events.first { $0.data["kind"] == "tool" }
            #expect(tool?.data["name"] == "run" && tool?.data["exitCode"] == 0)
            #expect(try await api.request(.get, "/v1/sessions/\(id)/events?fromId=-1").errorField == "fromId")
            #expect(try await api.request(.get, "/v1/sessions/\(id)/executions/exc_000000000000aaaaaaaaaa").status == 404)
        }
    }
}

extension TestAPI {
    /// Waits until the session's runtime is in `state`; returns the session view.
    @discardableResult
    func waitForRuntime(_ id: SessionID, state: String, within seconds: Double = 10) async throws -> JSONValue {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        var last: JSONValue = .null
        while ContinuousClock.now < deadline {
            last = try await request(.get, "/v1/sessions/\(id)").json
            if last["runtime"]?["state"]?.stringValue == state { return last }
            try await Task.sleep(for: .milliseconds(25))
        }
        Issue.record("runtime never reached \(state): \(last["runtime"] ?? .null)")
        throw CancellationError()
    }

    /// Waits until the latest execution has `status`; returns it.
    @discardableResult
    func waitForExecution(_ id: SessionID, status: String, within seconds: Double = 15) async throws -> JSONValue {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        var last: JSONValue = .null
        while ContinuousClock.now < deadline {
            last = try await request(.get, "/v1/sessions/\(id)")["latestExecution"] ?? .null
            if last["status"]?.stringValue == status { return last }
            try await Task.sleep(for: .milliseconds(25))
        }
        Issue.record("execution never reached \(status): \(last)")
        throw CancellationError()
    }

    struct EventView {
        var id: Int64
        var type: String
        var executionId: String?
        var data: [String: JSONValue]
    }

    /// Every event of the session, paging through the events route.
    func events(_ id: SessionID) async throws -> [EventView] {
        var all: [EventView] = []
        var from: Int64 = 0
        while true {
            let page = try await request(.get, "/v1/sessions/\(id)/events?fromId=\(from)&limit=1000")
            let events = page["events"]?.arrayValue ?? []
            all += events.map {
                EventView(
                    id: $0["id"]?.intValue ?? -1, type: $0["type"]?.stringValue ?? "", executionId: $0["executionId"]?.stringValue,
                    data: $0["data"]?.objectValue ?? [:])
            }
            guard events.count == 1000, let next = page["nextFromId"]?.intValue else { return all }
            from = next
        }
    }
}

@Suite("Liveness warnings and runtimes that never connect", .processes)
struct LivenessScenarioTests {
    @Test("heartbeats without progress give one execution.stuck warning, not a kill")
    func stuckWarning() async throws {
        let timing = Timing(idleTimeoutMs: 60_000, heartbeatIntervalMs: 100, staleThresholdMs: 1000, stopGraceMs: 1500, stuckAfterMs: 700)
        try await TestServer(timing: timing).run { api in
            let id = try await api.createSession(["prompt": "say a\nsleep 2.5\nsay b"])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            try await api.waitForExecution(id, status: "completed", within: 20)
            let events = try await api.events(id)
            let stuck = events.filter { $0.type == "execution.stuck" }
            #expect(stuck.count == 1)
            #expect((stuck.first?.data["sinceLastProgressMs"]?.intValue ?? 0) >= 700)
            #expect(events.filter { $0.type == "agent" }.count == 2)
        }
    }

    @Test("a runtime that never connects is declared crashed and its pending execution fails")
    func runtimeNeverConnects() async throws {
        var server = try TestServer(
            timing: Timing(idleTimeoutMs: 60_000, heartbeatIntervalMs: 100, staleThresholdMs: 1000, pendingTimeoutMs: 1000, stopGraceMs: 500))
        let silent = server.directory.url.appendingPathComponent("silent-runtime.sh")
        try "#!/bin/sh\nexec sleep 30\n".write(to: silent, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: silent.path)
        server.runtimeExecutable = silent
        try await server.run { api in
            let id = try await api.createSession()
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let stopped = try await api.waitForRuntime(id, state: "stopped", within: 5)
            #expect(stopped["runtime"]?["stopReason"]?["rule"] == "crashed")
            let execution = try await api.waitForExecution(id, status: "failed")
            #expect(execution["error"]?.stringValue?.isEmpty == false)
            #expect(execution["runningAt"] == .null)
        }
    }
}

@Suite("Changing a prepared session", .processes)
struct PatchPreparedSessionTests {
    @Test("a new repo, setup commands or env vars re-prepare the workspace and restart the runtime; a failing setup is 422 and changes nothing")
    func patchReprepares() async throws {
        let server = try TestServer(timing: Timing(idleTimeoutMs: 60_000, heartbeatIntervalMs: 150, staleThresholdMs: 1500, stopGraceMs: 1000))
        let first = try await makeGitRepository(in: server.directory, name: "first")
        let second = try await makeGitRepository(in: server.directory, name: "second")
        try "second repo\n".write(to: second.appendingPathComponent("marker.txt"), atomically: true, encoding: .utf8)
        try await shell("git add marker.txt && git -c user.name=t -c user.email=t@e commit -q -m marker", in: second)
        try await server.run { api in
            let id = try await api.createSession(["prompt": "run cat marker.txt; echo $COLOUR", "repo": ["url": .string(first.path)]])
            try await api.waitForRuntime(id, state: "running")
            let patched = try await api.request(
                .patch, "/v1/sessions/\(id)",
                json: [
                    "repo": ["url": .string(second.path)], "envVars": ["COLOUR": "blue"], "setupCommands": ["test -f marker.txt"],
                ])
            #expect(patched.status == 200, "\(patched.text)")
            #expect(patched["repo"]?["url"] == .string(second.path))
            let refused = try await api.request(.patch, "/v1/sessions/\(id)", json: ["setupCommands": ["exit 7"]])
            #expect(refused.status == 422)
            #expect(refused.errorCode == "SETUP_FAILED")
            #expect(refused.json["error"]?["exitCode"] == 7)
            #expect(try await api.request(.get, "/v1/sessions/\(id)")["setupCommands"] == ["test -f marker.txt"])
            try await api.waitForRuntime(id, state: "running")
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            try await api.waitForExecution(id, status: "completed", within: 20)
            let tool = try await api.events(id).last { $0.data["kind"] == "tool" }
            #expect(tool?.data["output"]?.stringValue?.contains("second repo") == true)
            #expect(tool?.data["output"]?.stringValue?.contains("blue") == true)
            let stops = try await api.events(id).filter { $0.type == "runtime.stopped" }
            #expect(stops.allSatisfy { $0.data["rule"] == "operator" })
        }
    }
}
