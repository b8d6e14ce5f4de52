import CloudAgentCore
import CloudAgentTestSupport
import Foundation
import HTTPTypes
import Testing

@testable import CloudAgentCLI

#if canImport(Glibc)
    import Glibc
#endif

/// Session budgets in the CLI: `--max-cost-usd` and `--max-tokens` of `sessions create`, `run`
/// and `sessions patch`; the budget and usage in the session view; a budget request shown by
/// `run`, `sessions show` and `events`, and answered by `cloud-agent answer` or inline.
@Suite("Budgets in the CLI: options, the session view, budget requests shown and answered")
struct BudgetCLITests {
    static let console = Console(isTerminal: false, environment: [:])

    static func json(_ text: String) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
    }

    /// Crosses a $1 budget at once ($2.00), then, once continued (allowed $2.00), again ($5.00).
    static let twoCrossings = "usage 10 10 2\ntick 20 0.05\nusage 10 10 3\ntick 200 0.05\nsay never reached"
    static let firstQuestion = "This session has used $2.00 of its $1.00 budget. Continue with $1.00 more?"
    static let secondQuestion = "This session has used $5.00 of its $2.00 budget. Continue with $1.00 more?"

    @Test("--max-cost-usd and --max-tokens take amounts people write, and refuse others with a message that says what to write")
    func options() throws {
        #expect(try BudgetText.cost("5") == 5)
        #expect(try BudgetText.cost("0.50") == 0.5)
        #expect(try BudgetText.cost(" $12.5 ") == 12.5)
        #expect(try BudgetText.cost("1000000") == 1_000_000)
        #expect(try BudgetText.tokens("100000") == 100_000)
        #expect(try BudgetText.tokens("100_000") == 100_000)
        #expect(try BudgetText.tokens("10,000") == 10_000)
        let badCosts = [
            ("abc", "like 5 or 0.50"), ("", "like 5 or 0.50"), ("1e3", "like 5 or 0.50"), ("-1", "like 5 or 0.50"), ("nan", "like 5 or 0.50"),
            ("0", "above 0"), ("0.00", "above 0"), ("1000000.01", "at most $1,000,000.00"),
        ]
        for (text, message) in badCosts {
            let error = Self.failure { _ = try BudgetText.cost(text) }
            #expect(error.contains("--max-cost-usd") && error.contains(message), "\(text): \(error)")
        }
        let badTokens = [
            ("many", "whole number"), ("1.5", "whole number"), ("1e5", "whole number"), ("-3", "whole number"), ("", "whole number"),
            ("0", "at least 1"), ("1000000000001", "at most 1,000,000,000,000"), ("99999999999999999999", "at most"),
        ]
        for (text, message) in badTokens {
            let error = Self.failure { _ = try BudgetText.tokens(text) }
            #expect(error.contains("--max-tokens") && error.contains(message), "\(text): \(error)")
        }
        #expect(try BudgetText.body(cost: nil, tokens: nil) == nil)
        #expect(try BudgetText.body(cost: "1.5", tokens: nil) == ["maxCostUsd": .number(1.5)])
        #expect(try BudgetText.body(cost: "2", tokens: "500") == ["maxCostUsd": 2, "maxTokens": 500])
    }

    /// The message of the error `body` throws ("" when it does not throw).
    static func failure(_ body: () throws -> Void) -> String {
        do {
            try body()
            return ""
        } catch {
            return "\(error)"
        }
    }

    @Test("the session view shows the budget (the allowance once raised) and the usage; nothing without them")
    func sessionView() throws {
        let views = HumanViews(console: Self.console)
        let raised = try Self.json(
            #"""
            {"sessionId": "agent_x", "agent": "scripted", "runtime": {"state": "running"},
             "budget": {"maxCostUsd": 1, "maxTokens": 10000, "raises": 1, "allowedCostUsd": 2, "allowedTokens": 20000},
             "usage": {"inputTokens": 12000, "outputTokens": 345, "cacheReadTokens": 0, "cacheWriteTokens": 0, "costUsd": 1.5, "source": "agent"}}
            """#)
        let lines = views.session(raised)
        #expect(lines.contains("  budget       $1.00, 10,000 tokens (allowed $2.00, 20,000 tokens after 1 raise)"), "\(lines)")
        #expect(lines.contains("  usage        $1.50, 12,345 tokens"), "\(lines)")

        let tokensOnly = try Self.json(
            #"""
            {"sessionId": "agent_x", "agent": "codex", "runtime": {"state": "running"},
             "budget": {"maxCostUsd": null, "maxTokens": 500000, "raises": 0, "allowedCostUsd": null, "allowedTokens": 500000},
             "usage": {"inputTokens": 10, "outputTokens": 5, "cacheReadTokens": 100, "cacheWriteTokens": 0, "costUsd": null, "source": "agent"}}
            """#)
        let tokenLines = views.session(tokensOnly)
        #expect(tokenLines.contains("  budget       500,000 tokens"), "\(tokenLines)")
        #expect(tokenLines.contains("  usage        115 tokens"), "\(tokenLines)")

        let without = views.session(
            try Self.json(#"{"sessionId": "agent_x", "agent": "scripted", "runtime": {"state": "running"}, "budget": null, "usage": null}"#))
        #expect(!without.contains { $0.contains("budget") || $0.contains("usage") }, "\(without)")

        #expect(BudgetText.dollars(0.004) == "$0.0040")
        #expect(BudgetText.dollars(1.999) == "$2.00")
        #expect(BudgetText.dollars(1234.5) == "$1,234.50")
        #expect(
            BudgetText.budget(try Self.json(#"{"maxCostUsd": 1, "maxTokens": null, "raises": 3, "allowedCostUsd": 4}"#))
                == "$1.00 (allowed $4.00 after 3 raises)")
    }

    @Test("a budget request is shown with its question, what allow and deny do, and how to answer; its event line says budget and allow|deny")
    func requestShown() throws {
        let request = try Self.json(
            #"""
            {"requestId": "budget_1", "kind": "budget", "executionId": "exc_1", "status": "pending",
             "input": {"measure": "cost", "used": 2, "limit": 1, "more": 1},
             "options": [{"id": "continue", "name": "Continue with $1.00 more", "kind": "allow_once"},
                         {"id": "stop", "name": "Stop the agent", "kind": "reject_once"}],
             "question": "This session has used $2.00 of its $1.00 budget. Continue with $1.00 more?",
             "deadline": "2030-01-01T00:00:00Z"}
            """#)
        let lines = HumanViews(console: Self.console).inputRequest(request, session: "agent_x")
        #expect(lines.first == "? \(Self.firstQuestion)  budget_1", "\(lines)")
        #expect(lines.contains("  allow: continue with $1.00 more · deny: stop the agent"), "\(lines)")
        #expect(lines.contains("  answer: cloud-agent answer agent_x budget_1 allow|deny"), "\(lines)")
        #expect(lines.contains { $0.hasPrefix("  the agent is stopped without an answer by ") }, "\(lines)")
        #expect(!lines.contains { $0.contains("permission") || $0.contains("measure") }, "not shown as a permission: \(lines)")

        let event = try #require(
            StreamedEvent(json: ["id": 7, "type": "input.requested", "executionId": "exc_1", "data": request.objectValue.map(JSONValue.object) ?? .null]))
        let rendered = EventRenderer(console: Self.console).lines(for: event)
        #expect(rendered == ["? budget: \(Self.firstQuestion)  budget_1 · cloud-agent answer SESSION budget_1 allow|deny"], "\(rendered)")
    }

    @Test("inline, a budget request takes y/continue or n/stop, never always; answer takes continue and stop for allow and deny")
    func answers() {
        for line in ["y", "yes", "Y", " continue ", "c", "allow"] { #expect(InlineAnswers.budgetDecision(line) == ["decision": "allow"], "\(line)") }
        for line in ["n", "no", "stop", "s", "deny"] { #expect(InlineAnswers.budgetDecision(line) == ["decision": "deny"], "\(line)") }
        for line in ["a", "always", "", "maybe"] { #expect(InlineAnswers.budgetDecision(line) == nil, "\(line)") }
        #expect(AnswerCommand.decisions == ["allow": "allow", "deny": "deny", "continue": "allow", "stop": "deny"])
    }

    @Test(
        "against a server: create and patch set, replace and clear the budget; a bad amount sends nothing; run shows the budget requests, answer continues then stops, and run exits 130 with reason budget",
        .processes
    )
    func againstAServer() async throws {
        let server = try TestServer()
        try await server.run { api in
            let cli = try CLIClientTests.runner(api, server)
            let create = try await cli.run(["sessions", "create"], ["--json", "--max-cost-usd", "1.5", "--max-tokens", "10_000", "say hi"])
            #expect(create.exitStatus == 0, "\(create.diagnostics)")
            let view = try #require(jsonLines(create.stdout).first)
            #expect(view["budget"]?["maxCostUsd"]?.doubleValue == 1.5 && view["budget"]?["maxTokens"] == 10_000, "\(view)")
            let id = try #require(view["sessionId"]?.stringValue)
            let shown = try await cli.run(["sessions", "show"], [id])
            #expect(shown.stdout.contains("budget       $1.50, 10,000 tokens\n"), "\(shown.diagnostics)")

            let replaced = try await cli.run(["sessions", "patch"], [id, "--max-tokens", "500", "--json"])
            #expect(replaced.exitStatus == 0, "\(replaced.diagnostics)")
            let budget = jsonLines(replaced.stdout).first?["budget"]
            #expect(budget?["maxCostUsd"] == .null && budget?["maxTokens"] == 500, "the budget is replaced whole: \(replaced.stdout)")
            let cleared = try await cli.run(["sessions", "patch"], [id, "--clear-budget", "--json"])
            #expect(cleared.exitStatus == 0 && jsonLines(cleared.stdout).first?["budget"] == .null, "\(cleared.diagnostics)")

            // Refused before anything is sent: no new session.
            for arguments in [["--max-cost-usd", "0"], ["--max-tokens", "lots"], ["--max-cost-usd", "five"]] {
                let refused = try await cli.run(["sessions", "create"], arguments + ["say hi"])
                #expect(refused.exitStatus == 2 && refused.stderr.contains(arguments[0]), "\(arguments): \(refused.diagnostics)")
            }
            let both = try await cli.run(["sessions", "patch"], [id, "--max-tokens", "5", "--clear-budget"])
            #expect(both.exitStatus == 2 && both.stderr.contains("contradict"), "\(both.diagnostics)")
            let listed = try await cli.run(["sessions", "list"], ["--json"])
            #expect(jsonLines(listed.stdout).first?["sessions"]?.arrayValue?.count == 1, "\(listed.diagnostics)")

            // A run that crosses its budget twice: continued once, then stopped.
            let run = try cli.start(["run"], ["--approvals", "ask", "--max-cost-usd", "1", Self.twoCrossings])
            defer { run.forceStop() }
            let session = try await eventuallyValue(within: 30, "the run's session") {
                run.stdout.split(separator: "\n").first { $0.hasPrefix("● session ") }?.split(separator: " ").dropFirst(2).first.map(String.init)
            }
            let sessionId = try #require(SessionID(rawValue: session))
            let first = try await api.pendingInput(sessionId)
            #expect(first["kind"] == "budget" && first["question"]?.stringValue == Self.firstQuestion, "\(first)")
            let firstId = try #require(first["requestId"]?.stringValue)

            let waiting = try await cli.run(["sessions", "show"], [session])
            #expect(waiting.exitStatus == 0, "\(waiting.diagnostics)")
            for expected in [
                "budget       $1.00\n", "usage        $2.00, 20 tokens\n", "? \(Self.firstQuestion)  \(firstId)\n",
                "  allow: continue with $1.00 more · deny: stop the agent\n", "  answer: cloud-agent answer \(session) \(firstId) allow|deny\n",
            ] {
                #expect(waiting.stdout.contains(expected), "\(expected) in \(waiting.stdout)")
            }

            let continued = try await cli.run(["answer"], [session, firstId, "continue"])
            #expect(continued.exitStatus == 0 && continued.stdout.contains("\(firstId): allow"), "\(continued.diagnostics)")
            #expect(continued.stdout.contains("the agent goes on"), "\(continued.diagnostics)")

            let second = try await eventuallyValue(within: 30, "the second budget request") {
                let listed = try await api.request(.get, "/v1/sessions/\(session)/input-requests")["requests"]?.arrayValue ?? []
                return listed.first { $0["status"] == "pending" && $0["requestId"]?.stringValue != firstId }
            }
            #expect(second["question"]?.stringValue == Self.secondQuestion, "\(second)")
            let secondId = try #require(second["requestId"]?.stringValue)
            let raised = try await cli.run(["sessions", "show"], [session])
            #expect(raised.stdout.contains("budget       $1.00 (allowed $2.00 after 1 raise)\n"), "\(raised.diagnostics)")

            let stopped = try await cli.run(["answer"], [session, secondId, "stop"])
            #expect(stopped.exitStatus == 0 && stopped.stdout.contains("\(secondId): deny"), "\(stopped.diagnostics)")
            #expect(stopped.stdout.contains("the execution is stopped (interrupted, reason budget)"), "\(stopped.diagnostics)")

            try await run.waitForExit(within: 30)
            #expect(run.exitedNormally && run.exitStatus == 130, "\(run.diagnostics)")
            #expect(run.stderr.contains("reason: budget"), "\(run.diagnostics)")
            let output = run.stdout
            #expect(output.contains("? budget: \(Self.firstQuestion)  \(firstId) · cloud-agent answer SESSION \(firstId) allow|deny"), "\(output)")
            #expect(output.contains("? budget: \(Self.secondQuestion)"), "\(output)")
            #expect(output.contains("↳ allow (by user)") && output.contains("↳ deny (by user)"), "\(output)")
            #expect(!output.split(separator: "\n").contains("never reached"), "\(output)")
            let events = try await cli.run(["events"], [session])
            #expect(events.stdout.contains("? budget: \(Self.firstQuestion)"), "\(events.diagnostics)")
        }
    }

    @Test("run on a terminal asks inline: an always is asked again, a y continues, an n stops the agent, and run exits 130", .processes)
    func runAsksInline() async throws {
        let server = try TestServer()
        try await server.run { api in
            let cli = try CLIClientTests.runner(api, server)
            let terminal = try TerminalRun(
                #""$CLI" run --approvals ask --max-cost-usd 1 "$PROMPT""#,
                environment: ["CLOUD_AGENT_URL": cli.url, "CLOUD_AGENT_TOKEN": cli.token, "PROMPT": Self.twoCrossings],
                transcript: server.directory.url.appendingPathComponent("inline-budget.out"))
            defer { terminal.stop() }
            func screen() -> String { terminal.screen }
            let prompt = "continue? [y]es, [n]o (stops the agent):"
            func prompts() -> Int { screen().components(separatedBy: prompt).count - 1 }

            try await eventually(within: 60, "the budget request asked inline") { prompts() == 1 }
            #expect(screen().contains("? budget: \(Self.firstQuestion)"), "\(screen())")
            terminal.type("a")
            try await eventually(within: 30, "an always asked again") { prompts() == 2 }
            terminal.type("y")
            try await eventually(within: 60, "the second budget request asked inline") { prompts() == 3 }
            #expect(screen().contains("? budget: \(Self.secondQuestion)"), "\(screen())")
            terminal.type("n")
            try await eventually(within: 60, "the run to end") { !terminal.isRunning }
            #expect(terminal.terminationStatus == 130, "\(screen())")
            #expect(screen().contains("reason: budget"), "\(screen())")
            let id = try #require(screen().firstMatch(of: /agent_[A-Za-z0-9-]+/).map { String($0.output) })
            let events = try await api.request(.get, "/v1/sessions/\(id)/events?limit=1000")["events"]?.arrayValue ?? []
            let resolved = events.filter { $0["type"] == "input.resolved" }
            #expect(resolved.compactMap { $0["data"]?["decision"]?.stringValue } == ["allow", "deny"], "\(resolved)")
            #expect(resolved.allSatisfy { $0["data"]?["by"] == "user" })
            let view = try await api.request(.get, "/v1/sessions/\(id)")
            #expect(view["latestExecution"]?["interruptReason"] == "budget", "\(view.text)")
        }
    }
}
