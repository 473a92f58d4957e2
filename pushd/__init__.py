"""pushd: the Pushgate push daemon (APNs and FCM delivery for Kamailio)."""
