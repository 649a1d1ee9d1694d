//! The web console over real HTTP (a cookie-keeping client; both
//! databases), and one walk through it in a real Chromium.

mod actions;
mod browser;
mod connections;
mod oidc;
mod portal;
mod roles;
mod security;
mod session_ends;
mod signin;
