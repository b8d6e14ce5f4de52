import CloudAgentTestSupport
import CloudAgentRuntime
import Foundation
import Testing

/// The scripted agent as the runtime runs it: `cloud-agent-runtime scripted-agent` as a real
/// process, prompt on stdin, in a temporary workspace.
@Suite("The scripted agent (a real process)", .processes)
struct ScriptedAgentTests {
    struct Run {
        var exitStatus: Int32
        var events: [[String: Any]]
        var stdout: String
        var seconds: Double
    }

    private func runAgent(_ prompt: String, in workspace: URL? = nil, arguments: [String] = ["scripted-agent"]) async throws -> Run {
        let directory = try workspace ?? makeTemporaryDirectory("scripted")
        let logs = try makeTemporaryDirectory("scripted-logs")
        defer {
            try? FileManager.default.removeItem(at: logs)
            if workspace == nil { try? FileManager.default.removeItem(at: directory) }
        }
        let started = ContinuousClock.now
        let process = try TestProcess(
            try runtimeBinary(),
            arguments: arguments,
            environment: ProcessInfo.processInfo.environment,
            directory: directory,
            stdin: prompt,
            outputIn: logs
        )
        do {
            try await process.waitForExit(within: 30)
        } catch {
            await process.terminate()
            throw error
        }
        let elapsed = ContinuousClock.now - started
        let stdout = process.stdout
        var events: [[String: Any]] = []
        for line in stdout.split(separator: "\n") {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            events.append(try #require(object, "not a JSON object: \(line)"))
        }
        #expect(stdout.isEmpty || stdout.hasSuffix("\n"))
        #expect(process.stderr.isEmpty)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return Run(exitStatus: process.exitStatus, events: events, stdout: stdout, seconds: seconds)
    }

    @Test("interactive: ask and approve write input requests and wait for the answers on stdin, in order")
    func askAndApproveOnStandardInput() async throws {
        let answers = [
            #"{"requestId":"p9","decision":"allow"}"#,  // for nobody: skipped
            #"{"requestId":"q1","decision":"answer","answer":"red"}"#,
            #"{"requestId":"p2","decision":"allow","optionId":"allow"}"#,
            #"{"requestId":"p3","decision":"timeout"}"#,
            #"{"requestId":"q4","decision":"answer","answer":{"size":"L"}}"#,
        ]
        let stdin =
            #"{"prompt":"ask Which color?\napprove echo ran\napprove echo never\nask Size?\nsay done"}"# + "\n" + answers.joined(separator: "\n") + "\n"
        let run = try await runAgent(stdin, arguments: ["scripted-agent", "--interactive"])
        #expect(run.exitStatus == 0)
        let types = run.events.map { $0["type"] as? String ?? "?" }
        #expect(types == ["input_request", "text", "input_request", "tool", "input_request", "text", "input_request", "text", "text"])
        #expect(run.events[0]["requestId"] as? String == "q1")
        #expect(run.events[0]["kind"] as? String == "question")
        #expect(run.events[0]["question"] as? String == "Which color?")
        #expect(run.events[1]["text"] as? String == "answer: red")
        #expect(run.events[2]["kind"] as? String == "permission")
        #expect(run.events[2]["tool"] as? String == "run")
        #expect((run.events[2]["input"] as? [String: Any])?["command"] as? String == "echo ran")
        #expect((run.events[2]["options"] as? [[String: Any]])?.count == 3)
        #expect(run.events[3]["output"] as? String == "ran\n")
        #expect(run.events[5]["text"] as? String == "denied: echo never")
        #expect(run.events[7]["text"] as? String == #"answer: {"size":"L"}"#)
        #expect(run.events[8]["text"] as? String == "done")
    }

    @Test("interactive: a cancelled request, or stdin's end, stops the agent (exit 130); without --interactive, ask is an error and approve is denied")
    func nobodyToAsk() async throws {
        let ended = try await runAgent(#"{"prompt":"ask Anyone?\nsay after"}"# + "\n", arguments: ["scripted-agent", "--interactive"])
        #expect(ended.exitStatus == 130)
        #expect(ended.events.compactMap { $0["text"] as? String } == [])
        let cancelled = try await runAgent(
            #"{"prompt":"approve echo hi\nsay after"}"# + "\n" + #"{"requestId":"p1","decision":"cancelled"}"# + "\n",
            arguments: ["scripted-agent", "--interactive"])
        #expect(cancelled.exitStatus == 130)
        #expect(cancelled.events.map { $0["type"] as? String ?? "?" } == ["input_request"])
        let plain = try await runAgent("ask Anyone?\napprove echo hi\nsay after")
        #expect(plain.events.map { $0["type"] as? String ?? "?" } == ["error", "text", "text"])
        #expect(plain.events.compactMap { $0["text"] as? String } == ["denied: echo hi", "after"])
    }

    @Test("usage IN OUT COST reports the execution's usage so far (cumulative); bad arguments are an error event")
    func usageIsCumulative() async throws {
        let run = try await runAgent("usage 100 20 0.5\nusage 10 2 0.25\nusage ten 1 0")
        #expect(run.exitStatus == 0)
        let usage = run.events.filter { $0["type"] as? String == "usage" }
        #expect(usage.count == 2)
        #expect(usage.last?["inputTokens"] as? Int == 110)
        #expect(usage.last?["outputTokens"] as? Int == 22)
        #expect(usage.last?["costUsd"] as? Double == 0.75)
        #expect((run.events.last?["message"] as? String)?.hasPrefix("usage: expected IN OUT COST") == true)
    }

    @Test func sayWritesATextEvent() async throws {
        let run = try await runAgent("say hello, world\n")
        #expect(run.exitStatus == 0)
        #expect(run.stdout == #"{"type":"text","text":"hello, world"}"# + "\n")
    }

    @Test func tickWritesNTextEventsApart() async throws {
        let run = try await runAgent("tick 3 0.05")
        #expect(run.exitStatus == 0)
        #expect(run.events.map { $0["text"] as? String } == ["tick 1/3", "tick 2/3", "tick 3/3"])
        #expect(run.events.allSatisfy { $0["type"] as? String == "text" })
        #expect(run.seconds >= 0.1)
    }

    @Test func sleepIsSilent() async throws {
        let run = try await runAgent("sleep 0.1\n")
        #expect(run.exitStatus == 0)
        #expect(run.stdout.isEmpty)
        #expect(run.seconds >= 0.1)
    }

    @Test func writeCreatesTheFileAndItsParents() async throws {
        let workspace = try makeTemporaryDirectory("scripted-write")
        defer { try? FileManager.default.removeItem(at: workspace) }
        let run = try await runAgent("write notes/today/plan.md ship it  today\n", in: workspace)
        #expect(run.exitStatus == 0)
        #expect(run.events.count == 1)
        let event = try #require(run.events.first)
        #expect(event["type"] as? String == "tool")
        #expect(event["name"] as? String == "write")
        #expect(event["input"] as? String == "notes/today/plan.md")
        #expect(event["status"] as? String == "ok")
        #expect(event["output"] as? String == "wrote 15 bytes")
        let written = try String(contentsOf: workspace.appendingPathComponent("notes/today/plan.md"), encoding: .utf8)
        #expect(written == "ship it  today\n")
    }

    @Test func writeRefusesPathsThatEscapeTheWorkspace() async throws {
        let parent = try makeTemporaryDirectory("scripted-escape")
        defer { try? FileManager.default.removeItem(at: parent) }
        let workspace = parent.appendingPathComponent("workspace")
        let outside = parent.appendingPathComponent("outside")
        try FileManager.default.createDirectory(at: workspace, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: outside, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: workspace.appendingPathComponent("link").path, withDestinationPath: outside.path)
        try FileManager.default.createSymbolicLink(
            atPath: workspace.appendingPathComponent("file-link").path, withDestinationPath: outside.appendingPathComponent("f").path)
        let absoluteInside = workspace.appendingPathComponent("inside.txt").path
        let run = try await runAgent(
            """
            write ../x nope
            write /etc/x nope
            write sub/../../x nope
            write link/x nope
            write file-link nope
            write \(absoluteInside) fine
            say still going
            """, in: workspace)
        #expect(run.exitStatus == 0)
        let messages = run.events.compactMap { $0["type"] as? String == "error" ? $0["message"] as? String : nil }
        #expect(
            messages == [
                "write: path escapes the workspace: ../x",
                "write: path escapes the workspace: /etc/x",
                "write: path escapes the workspace: sub/../../x",
                "write: path escapes the workspace: link/x",
                "write: path escapes the workspace: file-link",
            ])
        #expect(run.events.suffix(2).map { $0["type"] as? String } == ["tool", "text"])
        #expect(!FileManager.default.fileExists(atPath: parent.appendingPathComponent("x").path))
        #expect(!FileManager.default.fileExists(atPath: "/etc/x"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: outside.path).isEmpty)
        #expect(FileManager.default.fileExists(atPath: absoluteInside))
    }

    @Test func runReportsExitCodeAndCombinedOutput() async throws {
        let workspace = try makeTemporaryDirectory("scripted-run")
        defer { try? FileManager.default.removeItem(at: workspace) }
        let run = try await runAgent(
            """
            run echo out; echo err >&2; pwd; exit 4
            run true
            """, in: workspace)
        #expect(run.exitStatus == 0)
        #expect(run.events.count == 2)
        let failing = try #require(run.events.first)
        #expect(failing["type"] as? String == "tool")
        #expect(failing["name"] as? String == "run")
        #expect(failing["input"] as? String == "echo out; echo err >&2; pwd; exit 4")
        #expect(failing["exitCode"] as? Int == 4)
        #expect(failing["status"] as? String == "error")
        #expect(failing["output"] as? String == "out\nerr\n\(workspace.path)\n")
        let passing = try #require(run.events.last)
        #expect(passing["exitCode"] as? Int == 0)
        #expect(passing["status"] as? String == "ok")
        #expect(passing["output"] as? String == "")
    }

    @Test func runKeepsTheLast4000Characters() async throws {
        let run = try await runAgent("run i=0; while [ $i -lt 1000 ]; do echo line-$i; i=$((i+1)); done\n")
        let output = try #require(run.events.first?["output"] as? String)
        #expect(output.count == 4000)
        #expect(output.hasSuffix("line-999\n"))
    }

    @Test func otherLinesAreEchoedAndBlankLinesSkipped() async throws {
        let run = try await runAgent("hello there\n\n   \nwhat is 2+2?\r\n")
        #expect(run.exitStatus == 0)
        #expect(run.events.map { $0["text"] as? String } == ["hello there", "what is 2+2?"])
    }

    @Test func badArgumentsAreErrorsAndTheScriptGoesOn() async throws {
        let run = try await runAgent("sleep x\ntick 2\nexit nine\nsay after\nsleep -1\nsleep 1e300\nsleep nan\nexit 256\n")
        #expect(run.exitStatus == 0)
        #expect(run.events.map { $0["type"] as? String } == ["error", "error", "error", "text", "error", "error", "error", "error"])
        #expect((run.events[0]["message"] as? String)?.hasPrefix("sleep:") == true)
        #expect((run.events[1]["message"] as? String)?.hasPrefix("tick:") == true)
        #expect((run.events[2]["message"] as? String)?.hasPrefix("exit:") == true)
    }

    @Test func exitStopsAtOnceWithItsCode() async throws {
        let run = try await runAgent("say before\nexit 3\nsay never\n")
        #expect(run.exitStatus == 3)
        #expect(run.events.map { $0["text"] as? String } == ["before"])
    }

    @Test func jsonEscaping() async throws {
        let text = "quote \" backslash \\ tab \t bell \u{7} slash / unicode é ✓"
        let run = try await runAgent("say \(text)\n")
        #expect(run.events.first?["text"] as? String == text)
    }
}
