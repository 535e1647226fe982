//! The cases, by theme. Each asserts real behaviour of a real shell on
//! the target. `all` lists them in the suite's order; a heavy case (it
//! loads the target enough to disturb others) is marked `.heavy()` and
//! runs alone.

mod commands;
mod files;
mod interactive;
mod lifecycle;
mod output;
mod state;
mod timeouts;

use anyhow::Context as _;

use super::{ok, Capabilities, Case, Skip};
use crate::Session;
use commands::*;
use files::*;
use interactive::*;
use lifecycle::*;
use output::*;
use state::*;
use timeouts::*;

pub(super) fn all() -> Vec<Case> {
    vec![
        case!(state_persists),
        case!(exit_codes),
        case!(stderr_is_captured),
        case!(output_without_final_newline),
        case!(final_newline_kept_on_request),
        case!(heredoc_and_multiline),
        case!(quoting_torture),
        case!(ansi_c_quoting, |c: &Capabilities| (!c.ansi_c_quoting)
            .then_some("$'…' quoting")),
        case!(forged_sentinel_is_output),
        case!(exit_restarts_shell),
        case!(set_e_restarts_shell),
        case!(exec_restarts_shell),
        case!(timeout_interrupts_and_keeps_session, proc_fs),
        case!(timeout_escalates_when_sigint_ignored, proc_fs),
        case!(timeout_kills_background_children, proc_fs),
        case!(background_job_returns_at_once),
        case!(no_job_control_noise),
        case!(no_job_notice_from_stored_code),
        case!(stdin_is_staged_on_the_target),
        case!(read_does_not_hang),
        case!(ansi_is_stripped),
        case!(invalid_utf8_and_nul),
        case!(unicode_round_trip),
        case!(environment_is_safe),
        case!(big_output_is_capped_and_spooled).heavy(),
        case!(one_megabyte_line_of_output),
        case!(one_megabyte_command).heavy(),
        case!(ten_kilobyte_command),
        case!(syntax_error_is_prompt),
        case!(bad_commands_are_refused),
        case!(killed_shell_is_replaced, proc_fs),
        case!(
            sigint_ignored_parent_still_interrupts,
            |c: &Capabilities| {
                (!c.host_signals).then_some("shells that are children of this process")
            }
        ),
        case!(close_leaves_no_process, proc_fs),
        case!(hundred_sessions_concurrently).heavy(),
        case!(yield_then_poll),
        case!(partial_outputs_add_up_to_the_whole),
        case!(send_input_feeds_read),
        case!(interrupt_running_command),
        case!(wake_yields_then_interrupt_cleans_up, proc_fs),
        case!(python_repl_through_input),
        case!(host_drives_yielded_commands),
        case!(files_every_byte_round_trip, native_files),
        case!(files_follow_links_and_name_errors, native_files),
        case!(files_hundred_megabytes_streamed, native_files).heavy(),
    ]
}

pub(super) fn proc_fs(c: &Capabilities) -> Option<&'static str> {
    (!c.proc_fs).then_some("/proc on the target")
}

async fn shell_pid(s: &mut Session) -> anyhow::Result<u32> {
    ok(s, "echo $$").await?.trim().parse().context("parsing $$")
}

pub(super) fn native_files(c: &Capabilities) -> Option<&'static str> {
    (!c.native_files).then_some("native file transfer (Transport::files)")
}

pub(super) fn skip(why: &str) -> anyhow::Error {
    Skip(why.to_string()).into()
}
