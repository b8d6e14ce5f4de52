import CloudAgentAgents
import CloudAgentProtocol
import Foundation
import Testing

@Suite("ACP: messages, framing, turns, outcomes, permissions")
struct ACPTests {
    @Test("a line is a request, a notification, a response (result or error), or invalid — never a crash")
    func parsing() {
        #expect(
            ACPMessage.parse(#"{"jsonrpc":"2.0","id":0,"method":"session/request_permission","params":{"a":1}}"#)
                == .request(id: .number(0), method: "session/request_permission", params: ["a": .number(1)]))
        #expect(
            ACPMessage.parse(#"{"jsonrpc":"2.0","id":"x7","method":"fs/read_text_file"}"#) == .request(id: "x7", method: "fs/read_text_file", params: .null))
        #expect(ACPMessage.parse(#"{"jsonrpc":"2.0","method":"session/update","params":{}}"#) == .notification(method: "session/update", params: [:]))
        #expect(
            ACPMessage.parse(#"{"jsonrpc":"2.0","id":3,"result":{"stopReason":"end_turn"}}"#)
                == .response(id: .number(3), result: .success(["stopReason": "end_turn"])))
        guard
            case .response(_, .failure(let error)) = ACPMessage.parse(
                #"{"jsonrpc":"2.0","id":5,"error":{"code":-32603,"message":"Internal error","data":{"details":"Session not found: x"}}}"#)
        else {
            Issue.record("not an error response")
            return
        }
        #expect(error.code == -32603)
        #expect(error.description == "Internal error: Session not found: x")
        for bad in [
            "", "plain text", "{not json", "[1,2]", #"{"jsonrpc":"2.0","id":{"a":1},"method":"m"}"#, #"{"jsonrpc":"2.0","id":1}"#, #"{"id":true,"result":1}"#,
        ] {
            guard case .invalid = ACPMessage.parse(bad) else {
                Issue.record("\(bad) was read as a message")
                continue
            }
        }
        // Deeply nested JSON is refused by the decoder, not a stack overflow.
        let deep = #"{"jsonrpc":"2.0","method":"m","params":"# + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000) + "}"
        _ = ACPMessage.parse(deep)
    }

    @Test("messages written are one line of JSON each, and read back as themselves")
    func writing() {
        let request = ACPMessage.request(id: 7, method: "session/prompt", params: ["prompt": [["type": "text", "text": "two\nlines"]]])
        #expect(!request.contains("\n"))
        #expect(ACPMessage.parse(request) == .request(id: .number(7), method: "session/prompt", params: ["prompt": [["type": "text", "text": "two\nlines"]]]))
        let error = ACPMessage.response(id: "a", error: ACPError(code: ACPError.methodNotFound, message: "Method not found", data: ["method": "x"]))
        #expect(ACPMessage.parse(error) == .response(id: "a", result: .failure(ACPError(code: -32601, message: "Method not found", data: ["method": "x"]))))
    }

    @Test("the framer drops an overlong line whole and goes on with the next one")
    func framing() {
        var framer = BoundedLineFramer(maxLineBytes: 10)
        #expect(framer.append(Array("short\r\n0123456789ABCDEF".utf8)) == [.line("short")])
        #expect(framer.append(Array("GHIJ\nnext\npartial".utf8)) == [.overlong(20), .line("next")])
        #expect(framer.finish() == .line("partial"))
        #expect(framer.finish() == nil)
        var exact = BoundedLineFramer(maxLineBytes: 4)
        #expect(exact.append(Array("1234\n12345".utf8)) == [.line("1234")])
        #expect(exact.finish() == .overlong(5))
    }

    func chunk(_ text: String, thought: Bool = false) -> JSONValue {
        ["sessionUpdate": .string(thought ? "agent_thought_chunk" : "agent_message_chunk"), "content": ["type": "text", "text": .string(text)]]
    }

    @Test("message chunks are joined into one text event until another kind of update or the end; thoughts are logs")
    func joining() {
        var reader = ACPTurnReader()
        #expect(reader.read(update: chunk("Hel"), raw: "r1").isEmpty)
        #expect(reader.read(update: chunk("lo "), raw: "r2").isEmpty)
        #expect(reader.read(update: chunk("world"), raw: "r3").isEmpty)
        let atThought = reader.read(update: chunk("hmm", thought: true), raw: "r4")
        #expect(atThought.count == 1)
        #expect(atThought[0]["kind"] == "text" && atThought[0]["text"] == "Hello world")
        #expect(atThought[0]["raw"]?.stringValue?.contains(#""chunks":3"#) == true)
        let atTool = reader.read(
            update: [
                "sessionUpdate": "tool_call", "toolCallId": "t1", "title": "Run: ls", "kind": "execute", "status": "pending", "rawInput": ["command": "ls -la"],
            ], raw: "r5")
        #expect(atTool.count == 2)
        #expect(atTool[0]["kind"] == "log" && atTool[0]["message"] == "hmm" && atTool[0]["thought"] == true && atTool[0]["raw"] == "r4")
        #expect(
            atTool[1]["kind"] == "tool" && atTool[1]["name"] == "Run: ls" && atTool[1]["input"] == "ls -la" && atTool[1]["status"] == "running"
                && atTool[1]["toolKind"] == "execute")
        let done = reader.read(
            update: [
                "sessionUpdate": "tool_call_update", "toolCallId": "t1", "status": "completed",
                "content": [["type": "content", "content": ["type": "text", "text": "a.txt"]]], "rawOutput": ["exitCode": .number(0)],
            ], raw: "r6")
        #expect(
            done.first?["name"] == "Run: ls" && done.first?["input"] == "ls -la" && done.first?["output"] == "a.txt" && done.first?["exitCode"] == .number(0)
                && done.first?["status"] == "completed")
        #expect(reader.read(update: chunk("final words"), raw: "r7").isEmpty)
        #expect(reader.finalMessage == "final words")
        #expect(reader.flush().first?["text"] == "final words")
        #expect(reader.flush().isEmpty)
    }

    @Test("long text is cut at a paragraph once enough has gathered, and never grows past the bound")
    func boundaries() {
        var reader = ACPTurnReader()
        let paragraph = String(repeating: "a", count: ACPTurnReader.flushCharacters) + "\n\n"
        let first = reader.read(update: chunk(paragraph + "tail"), raw: "r")
        #expect(first.count == 1 && first[0]["text"]?.stringValue?.count == ACPTurnReader.flushCharacters)
        #expect(reader.flush().first?["text"] == "tail")
        let huge = reader.read(update: chunk(String(repeating: "x", count: ACPTurnReader.maxTextCharacters * 3 + 5)), raw: "r")
        #expect(huge.count == 3 && huge.allSatisfy { $0["text"]?.stringValue?.count == ACPTurnReader.maxTextCharacters })
        #expect(reader.flush().first?["text"]?.stringValue?.count == 5)
    }

    @Test("plans are logs listing their entries; echoes and bookkeeping updates are dropped; unknown ones are named")
    func otherUpdates() {
        var reader = ACPTurnReader()
        let plan = reader.read(
            update: [
                "sessionUpdate": "plan",
                "entries": [
                    ["content": "read", "status": "completed"], ["content": "write", "status": "in_progress"], ["content": "test", "status": "pending"],
                ],
            ], raw: "p")
        #expect(plan.first?["message"] == "plan:\n[x] read\n[~] write\n[ ] test")
        #expect(reader.read(update: ["sessionUpdate": "user_message_chunk", "content": ["type": "text", "text": "me"]], raw: "u").isEmpty)
        #expect(reader.read(update: ["sessionUpdate": "available_commands_update", "availableCommands": []], raw: "c").isEmpty)
        #expect(reader.read(update: ["sessionUpdate": "current_mode_update", "currentModeId": "plan"], raw: "m").first?["message"] == "mode: plan")
        #expect(reader.read(update: ["sessionUpdate": "brand_new_thing"], raw: "n").first?["message"] == "session/update brand_new_thing")
        #expect(reader.read(update: ["sessionUpdate": "tool_call"], raw: "t").first?["message"] == "a tool_call without a toolCallId")
        let raw = String(repeating: "r", count: ACPTurnReader.rawLimit + 100)
        #expect(reader.read(update: ["sessionUpdate": "plan", "entries": []], raw: raw).first?["raw"]?.stringValue?.count == ACPTurnReader.rawLimit + 1)
    }

    @Test("the outcome comes from the stop reason; an error or a Claude Code API error text fails the execution with the agent's words")
    func outcomes() {
        #expect(ACPTurnOutcome.outcome(.success(["stopReason": "end_turn"]), finalMessage: "done") == .succeeded)
        #expect(
            ACPTurnOutcome.outcome(.success(["stopReason": "end_turn"]), finalMessage: "API Error: 400 the model refuses")
                == .failed("API Error: 400 the model refuses"))
        #expect(ACPTurnOutcome.outcome(.success(["stopReason": "refusal"]), finalMessage: "") == .failed("the agent refused to go on (stopReason refusal)"))
        #expect(ACPTurnOutcome.outcome(.success(["stopReason": "max_tokens"]), finalMessage: "").isFailure)
        #expect(ACPTurnOutcome.outcome(.success(["stopReason": "max_turn_requests"]), finalMessage: "").isFailure)
        #expect(ACPTurnOutcome.outcome(.success([:]), finalMessage: "").isFailure)
        #expect(
            ACPTurnOutcome.outcome(.failure(ACPError(code: -32603, message: "rate limited")), finalMessage: "")
                == .failed("the agent failed the prompt: rate limited"))
    }

    func permissionParams(_ kinds: [String]) -> JSONValue {
        [
            "sessionId": "s", "toolCall": ["toolCallId": "t1", "title": "Run: rm -rf build"],
            "options": .array(kinds.map { ["optionId": .string("id-\($0)"), "name": .string($0), "kind": .string($0)] }),
        ]
    }

    @Test("permissions with approvals auto: allow-once first, else allow-always, else reject; read-only rejects; each decision is a log event")
    func permissions() {
        let once = ACPPermissions.decide(permissionParams(["allow_always", "allow_once", "reject_once"]), approvals: .auto, raw: "{}")
        #expect(once.result == ["outcome": ["outcome": "selected", "optionId": "id-allow_once"]])
        #expect(once.event["kind"] == "log")
        #expect(once.event["message"] == "permission allowed once (approvals auto): Run: rm -rf build")
        #expect(once.event["permission"]?["decision"] == "allow" && once.event["permission"]?["toolCallId"] == "t1")
        let always = ACPPermissions.decide(permissionParams(["allow_always", "reject_once"]), approvals: .auto, raw: "{}")
        #expect(always.result["outcome"]?["optionId"] == "id-allow_always")
        let none = ACPPermissions.decide(permissionParams(["reject_once"]), approvals: .auto, raw: "{}")
        #expect(none.result["outcome"]?["optionId"] == "id-reject_once" && none.event["permission"]?["decision"] == "deny")
        #expect(ACPPermissions.decide(permissionParams([]), approvals: .auto, raw: "{}").result == ["outcome": ["outcome": "cancelled"]])
        let readOnly = ACPPermissions.decide(permissionParams(["allow_once", "reject_once"]), approvals: .auto, readOnly: true, raw: "{}")
        #expect(readOnly.result["outcome"]?["optionId"] == "id-reject_once")
    }

    @Test("agents file: protocol acp entries (timeout allowed, output and placeholders refused), unknown protocols refused")
    func agentsFile() throws {
        let parsed = try AgentsFile.parse(
            Data(
                #"{"agents": [{"name": "claude-acp", "command": ["claude-code-acp", "--x"], "protocol": "acp", "timeout": "90s"}, {"name": "plain", "command": ["/bin/cat"]}]}"#
                    .utf8))
        #expect(parsed[0].kind == .acp && parsed[0].arguments == ["--x"] && parsed[0].timeout == "90s")
        #expect(parsed[1].kind == .command)
        for (body, phrase) in [
            (#"{"agents": [{"name": "a", "command": ["x"], "protocol": "mcp"}]}"#, "protocol \"mcp\""),
            (#"{"agents": [{"name": "a", "command": ["x"], "protocol": "acp", "output": "jsonl"}]}"#, "output does not apply"),
            (#"{"agents": [{"name": "a", "command": ["x", "{prompt}"], "protocol": "acp"}]}"#, "over the protocol"),
            (#"{"agents": [{"name": "a", "command": ["x"], "timeout": "5s"}]}"#, "timeout is only for"),
        ] {
            #expect(throws: AgentsFile.Invalid.self) { try AgentsFile.parse(Data(body.utf8)) }
            do {
                _ = try AgentsFile.parse(Data(body.utf8))
            } catch {
                #expect(error.description.contains(phrase), "\(error)")
            }
        }
    }
}

extension AgentOutcome {
    var isFailure: Bool {
        if case .failed = self { true } else { false }
    }
}
