import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HTTPTypes
import Testing

@Suite("Auto-commit", .processes)
struct AutoCommitTests {
    @Test("each execution's changes are committed on the work branch and pushed to a bare origin; a cold start restores them")
    func commitsAndPushes() async throws {
        let timing = Timing(idleTimeoutMs: 1500, heartbeatIntervalMs: 150, staleThresholdMs: 1500, stopGraceMs: 1000)
        let server = try TestServer(timing: timing)
        let source = try await makeGitRepository(in: server.directory, name: "source")
        let origin = server.directory.url.appendingPathComponent("origin.git")
        try await shell("git clone -q --bare \(source.path) \(origin.path)")
        try await server.run { api in
            let id = try await api.createSession([
                "prompt": "write hello.txt hi there\nrun mkdir -p docs && echo notes > docs/notes.md",
                "repo": ["url": .string(origin.path)], "autoCommit": true,
            ])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let execution = try await api.waitForExecution(id, status: "completed")
            let executionId = try #require(execution["executionId"]?.stringValue)
            try await eventually(within: 10, "the auto-commit event") { try await api.events(id).contains { $0.type.hasPrefix("git.") } }
            let committed = try #require(try await api.events(id).first { $0.type == "git.committed" })
            #expect(committed.executionId == executionId)
            #expect(committed.data["pushed"] == true)
            let branch = "session/\(id.rawValue)"
            #expect(committed.data["branch"] == .string(branch))
            #expect(try await shell("git --git-dir \(origin.path) show \(branch):hello.txt") == "hi there\n")
            #expect(try await shell("git --git-dir \(origin.path) show \(branch):docs/notes.md") == "notes\n")
            let log = try await shell("git --git-dir \(origin.path) log -1 --format=%an%n%s \(branch)")
            #expect(log == "cloud-agent\ncloud-agent: execution \(executionId)\n")
            // The execution's own status is untouched by git.
            #expect(try await api.request(.get, "/v1/sessions/\(id)")["latestExecution"]?["status"] == "completed")

            // Nothing changed: no commit.
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "say nothing to do"]).status == 202)
            try await api.waitForExecution(id, status: "completed")
            try await eventually(within: 10, "the second auto-commit event") { try await api.events(id).filter { $0.type.hasPrefix("git.") }.count == 2 }
            #expect(try await api.events(id).last { $0.type.hasPrefix("git.") }?.type == "git.nothing_to_commit")

            // After the idle stop, the workspace is gone; the cold start restores the pushed branch.
            try await api.waitForRuntime(id, state: "stopped", within: 10)
            try FileManager.default.removeItem(at: api.plane.configuration.dataDirectory.appendingPathComponent("workspaces/\(id.rawValue)"))
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "run cat hello.txt docs/notes.md"]).status == 202)
            try await api.waitForExecution(id, status: "completed", within: 30)
            let tool = try await api.events(id).last { $0.data["kind"] == "tool" }
            #expect(tool?.data["output"]?.stringValue?.contains("hi there") == true)
            #expect(tool?.data["output"]?.stringValue?.contains("notes") == true)
        }
    }

    @Test("a push that fails is an event, not a failed execution")
    func pushFailure() async throws {
        let server = try TestServer(timing: Timing(idleTimeoutMs: 60_000, heartbeatIntervalMs: 150, staleThresholdMs: 1500, stopGraceMs: 1000))
        let source = try await makeGitRepository(in: server.directory, name: "source")
        let origin = server.directory.url.appendingPathComponent("origin.git")
        try await shell("git clone -q --bare \(source.path) \(origin.path)")
        try await server.run { api in
            let id = try await api.createSession(["prompt": "write a.txt a", "repo": ["url": .string(origin.path)], "autoCommit": true])
            // The remote goes away after the clone.
            try FileManager.default.removeItem(at: origin)
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            try await api.waitForExecution(id, status: "completed")
            try await eventually(within: 10, "the push failure") { try await api.events(id).contains { $0.type == "git.push_failed" } }
            #expect(try await api.request(.get, "/v1/sessions/\(id)")["latestExecution"]?["status"] == "completed")
        }
    }
}
